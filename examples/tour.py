# examples/tour.py
import asyncio, os
from datetime import datetime, timedelta, timezone
from dispatcher import Client

async def main():
    async with Client.from_url("unix://var/redis.sock") as client:
        hook = await client.create_webhook(
            "acme",                                       # tenant
            "http://127.0.0.1:9000/webhooks",             # where to POST
            event_types=["order.created", "order.paid"],  # or ["*"]
            secret=os.environ["WEBHOOK_SECRET"],          # omit it and one is generated
        )
        print("webhook", hook["id"])
        answer = await client.publish("acme", "order.created", {"order": 42, "total": 9.99})
        print("matched", answer["matched"], "webhooks")    # every subscriber of acme, not only ours
        job_id = next(job["id"] for job in answer["jobs"] if job["webhook_id"] == hook["id"])
        for _ in range(50):                               # it takes milliseconds; wait up to 5 s
            job = await client.get_job(job_id)
            if job["state"] in ("delivered", "dead"):
                break
            await asyncio.sleep(0.1)
        print(job["state"], job["attempts"])              # delivered [{'at': ..., 'status': 204, ...}]
        # a scheduled delivery: times need a time zone (a naive datetime is refused)
        later = datetime.now(timezone.utc) + timedelta(seconds=30)
        scheduled = await client.publish("acme", "order.paid", {"order": 42}, deliver_at=later)
        print("scheduled for", later, [job["id"] for job in scheduled["jobs"]])
        # each run registers one more webhook; await client.delete_webhook(hook["id"]) removes it

asyncio.run(main())
