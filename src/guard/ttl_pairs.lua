-- respguard: run an MSET or MSETNX too large for the proxy to list its keys (streamed, or
-- with more arguments than one Lua call can pass on), then give each key it wrote the TTL
-- of the first rule whose pattern matches the key, in one step Redis runs atomically.
-- ARGV[1]: the number of rules R (those that apply to this client, in order; first match
--          wins); ARGV[2 .. 1 + 3R]: each rule's pattern (Redis's glob), TTL in
--          milliseconds ('0': the rule exempts its keys) and whether it is a catch-all
--          ('1': it does not cover keys with a job library's shape).
-- ARGV[2 + 3R]: the number of job-library key shapes S (0 when no rule is a catch-all);
--          then the S shapes (globs).
-- ARGV[3 + 3R + S ..]: the client's command, as it sent it.
redis.setresp(3)
local function signed(b)
  if b > 127 then return b - 256 end
  return b
end
-- A class after '[' at pattern index i against byte c: the index of its ']' (or of its last
-- byte when unterminated) and whether c is in it. Redis 7.0's stringmatchlen, step for step.
local function class(p, i, c)
  local n = #p
  local neg = string.byte(p, i) == 94
  if neg then i = i + 1 end
  local hit = false
  while true do
    local left = n - i + 1
    local b = string.byte(p, i)
    if b == 92 and left >= 2 then
      i = i + 1
      if string.byte(p, i) == c then hit = true end
    elseif b == 93 then
      break
    elseif left <= 0 then
      i = i - 1
      break
    elseif left >= 3 and string.byte(p, i + 1) == 45 then
      local lo, hi = signed(b), signed(string.byte(p, i + 2))
      if lo > hi then lo, hi = hi, lo end
      local sc = signed(c)
      if sc >= lo and sc <= hi then hit = true end
      i = i + 2
    elseif b == c then
      hit = true
    end
    i = i + 1
  end
  return i, hit ~= neg
end
local function match(p, k, i, j, state)
  local pn, kn = #p, #k
  while i <= pn and j <= kn do
    local b = string.byte(p, i)
    if b == 42 then
      while i < pn and string.byte(p, i + 1) == 42 do i = i + 1 end
      if i == pn then return true end
      while j <= kn do
        if match(p, k, i + 1, j, state) then return true end
        if state.skip then return false end
        j = j + 1
      end
      state.skip = true
      return false
    elseif b == 63 then
      j = j + 1
    elseif b == 91 then
      local hit
      i, hit = class(p, i + 1, string.byte(k, j))
      if not hit then return false end
      j = j + 1
    else
      if b == 92 and pn - i + 1 >= 2 then i = i + 1 end
      if string.byte(p, i) ~= string.byte(k, j) then return false end
      j = j + 1
    end
    i = i + 1
    if j > kn then
      while string.byte(p, i) == 42 do i = i + 1 end
      break
    end
  end
  return i > pn and j > kn
end
local function glob(p, k)
  return p == '*' or match(p, k, 1, 1, {skip = false})
end
local rules = tonumber(ARGV[1])
local shapes = tonumber(ARGV[2 + 3 * rules])
local first = 3 + 3 * rules + shapes
-- Whether a key has a job library's shape.
local function library(key)
  for s = 3 + 3 * rules, 2 + 3 * rules + shapes do
    if glob(ARGV[s], key) then return true end
  end
  return false
end
local name = string.lower(ARGV[first])
local n = #ARGV
local reply
if n - first < 4000 then
  reply = redis.pcall(unpack(ARGV, first))
else
  -- Too many arguments for one call: the same writes, in order, in pieces.
  if name == 'msetnx' then
    for i = first + 1, n, 2 do
      if redis.call('exists', ARGV[i]) == 1 then return 0 end
    end
  end
  for i = first + 1, n, 4000 do
    reply = redis.pcall('mset', unpack(ARGV, i, math.min(i + 3999, n)))
    if type(reply) == 'table' and reply.err then return reply end
  end
  if name == 'msetnx' then reply = 1 end
end
if type(reply) == 'table' and reply.err then return reply end
if reply == 0 then return reply end
for i = first + 1, n, 2 do
  local key = ARGV[i]
  for r = 1, rules do
    local at = 3 * r - 1
    if glob(ARGV[at], key) and not (ARGV[at + 2] == '1' and library(key)) then
      local ttl = ARGV[at + 1]
      if ttl ~= '0' and redis.acl_check_cmd('pexpire', key, ttl, 'NX') then
        redis.pcall('pexpire', key, ttl, 'NX')
      end
      break
    end
  end
end
return reply
