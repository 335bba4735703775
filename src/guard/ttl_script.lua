-- respguard: run the client's command, then give its keys the expiry the proxy's TTL rules
-- ask for, in one step Redis runs atomically.
-- KEYS: the keys to give an expiry.
-- ARGV[1]: 'ok' when success alone means the command wrote, 'changed' when a reply of 0 or
--          nil means it changed nothing (SETNX, HSETNX, EXPIRE ... GT, ...).
-- ARGV[2 .. 1 + 3 * #KEYS]: for each key, its mode ('NX': add the rule's TTL when the key has
--          none; 'LT': lower an expiry above the rule's max_ttl; 'SET': decide from the SET's
--          own options), the TTL and the max_ttl in milliseconds ('0': none).
-- ARGV[2 + 3 * #KEYS ..]: the client's command, as it sent it.
-- Replies are read as RESP3, the richer protocol: returned, Redis converts them to the
-- client's protocol exactly as it converts its own replies (a double stays a double in
-- RESP3 and becomes a bulk string in RESP2).
redis.setresp(3)
local n = #KEYS
local first = 2 + 3 * n
local reply = redis.pcall(unpack(ARGV, first))
if type(reply) == 'table' and reply.err then return reply end
if ARGV[1] == 'changed' and (reply == 0 or not reply) then return reply end
for i = 1, n do
  local mode, ttl, max = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if mode == 'SET' then
    mode, ttl = 'NX', ttl
    for j = first + 3, #ARGV do
      local o = string.upper(ARGV[j])
      if o == 'KEEPTTL' then mode = nil break end
      if o == 'EX' or o == 'PX' or o == 'EXAT' or o == 'PXAT' then mode, ttl = 'LT', max break end
    end
  elseif mode == 'LT' then
    ttl = max
  end
  if mode and ttl ~= '0' and redis.acl_check_cmd('pexpire', KEYS[i], ttl, mode) then
    redis.pcall('pexpire', KEYS[i], ttl, mode)
  end
end
return reply
