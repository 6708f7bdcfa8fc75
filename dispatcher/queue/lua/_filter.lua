-- _filter.lua: a webhook's payload filter, evaluated (dispatcher/filters.py documents the
-- language and compiles a filter into the list tree read here; the evaluation lives only here).
-- Not a script of its own: scripts.py puts it in place of the line '-- include: _filter.lua'.
--   node = {'and', node...} | {'or', node...} | {'not', node} | {op, {step...}, operand}
-- Types are strict (a comparison across types is false), strings compare by bytes (Lua's '<'
-- on strings follows the server's locale), a missing path matches only exists=false, ne and
-- nin, and a path never steps into an array (cjson reads an array's keys as numbers, so a
-- step, always a string, finds nothing there).

-- The value at the path's steps in the decoded payload, or nil when it is missing.
local function filter_lookup(doc, steps)
  local value = doc
  for i = 1, #steps do
    if type(value) ~= 'table' then return nil end
    value = value[steps[i]]
    if value == nil then return nil end
  end
  return value
end

-- a < b, both numbers or both strings (strings by their bytes, whatever the locale)
local function filter_less(a, b)
  if type(a) == 'number' then return a < b end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function filter_equal(value, operand)
  return value ~= nil and type(value) == type(operand) and value == operand
end

local function filter_ordered(value, operand)
  local kind = type(value)
  return value ~= nil and kind == type(operand) and (kind == 'number' or kind == 'string')
end

local function filter_in(value, list)
  for i = 1, #list do
    if filter_equal(value, list[i]) then return true end
  end
  return false
end

-- Whether the decoded payload ``doc`` (nil: not JSON, no path is present) matches ``node``.
local function filter_match(node, doc)
  local op = node[1]
  if op == 'and' then
    for i = 2, #node do
      if not filter_match(node[i], doc) then return false end
    end
    return true
  elseif op == 'or' then
    for i = 2, #node do
      if filter_match(node[i], doc) then return true end
    end
    return false
  elseif op == 'not' then
    return not filter_match(node[2], doc)
  end
  local value, operand = filter_lookup(doc, node[2]), node[3]
  if op == 'eq' then return filter_equal(value, operand)
  elseif op == 'ne' then return not filter_equal(value, operand)
  elseif op == 'in' then return filter_in(value, operand)
  elseif op == 'nin' then return not filter_in(value, operand)
  elseif op == 'exists' then return (value ~= nil) == operand
  elseif not filter_ordered(value, operand) then return false
  elseif op == 'gt' then return filter_less(operand, value)
  elseif op == 'gte' then return not filter_less(value, operand)
  elseif op == 'lt' then return filter_less(value, operand)
  elseif op == 'lte' then return not filter_less(operand, value)
  end
  return false
end
