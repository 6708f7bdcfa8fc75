// webhooks.js: a placeholder until the view is written (the shell's contract: render(root, params)).

import { el } from "./dom.js";

export async function render(root) {
  root.append(el("p", { class: "muted" }, "This view is not available yet."));
}
