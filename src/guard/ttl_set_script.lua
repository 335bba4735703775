-- respguard: run a SET whose value the proxy streamed to Redis unseen, so that its options
-- (after the value) are unknown to the proxy, then give its key the expiry the TTL rule asks
-- for, as the SET's own options decide, in one step Redis runs atomically.
-- KEYS[1]: the SET's key.
-- ARGV[1]: the rule's TTL in milliseconds ('0': none); ARGV[2]: its max_ttl ('0': none).
-- ARGV[3 ..]: the client's SET, as it sent it (ARGV[6 ..] are its options).
-- The key gets the TTL when the SET wrote it and gives no expiry (nor KEEPTTL), or its
-- expiry lowered to max_ttl when the SET gives one (EX, PX, EXAT, PXAT). Whether it wrote
-- is read from the reply as the options make it: without GET, nil means NX or XX stopped
-- it; with GET, the reply is the old value, so NX wrote only when it is nil, XX only when
-- it is not.
redis.setresp(3)
local reply = redis.pcall(unpack(ARGV, 3))
if type(reply) == 'table' and reply.err then return reply end
local mode, ms, nx, xx, get = 'NX', ARGV[1], false, false, false
for j = 6, #ARGV do
  local o = string.upper(ARGV[j])
  if o == 'KEEPTTL' then mode = nil
  elseif o == 'EX' or o == 'PX' or o == 'EXAT' or o == 'PXAT' then mode, ms = 'LT', ARGV[2]
  elseif o == 'NX' then nx = true
  elseif o == 'XX' then xx = true
  elseif o == 'GET' then get = true
  end
end
local wrote
if get then
  wrote = (not nx or not reply) and (not xx or reply)
else
  wrote = reply
end
if wrote and mode and ms ~= '0' and redis.acl_check_cmd('pexpire', KEYS[1], ms, mode) then
  redis.pcall('pexpire', KEYS[1], ms, mode)
end
return reply
