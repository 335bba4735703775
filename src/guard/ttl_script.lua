-- respguard: run the client's command, then give its keys the expiry the proxy's TTL rules
-- ask for, in one step Redis runs atomically. Sent whole with every wrapped command (EVAL,
-- so that a SCRIPT FLUSH can never make a write fail), and Redis hashes it each time: the
-- code below is terse on purpose, every byte is paid per command.
-- KEYS: the keys to give an expiry.
-- ARGV[1]: 'ok' when success alone means the command wrote, 'changed' when a reply of 0 or
--          nil means it changed nothing (SETNX, HSETNX, EXPIRE ... GT, ...).
-- ARGV[2 .. 1 + 2 * #KEYS]: for each key, its mode and milliseconds: 'NX' and the rule's
--          TTL (add it when the key has none), or 'LT' and the rule's max_ttl (lower an
--          expiry above it; no expiry counts as infinite).
-- ARGV[2 + 2 * #KEYS ..]: the client's command, as it sent it.
-- Replies are read as RESP3, the richer protocol: returned, Redis converts them to the
-- client's protocol exactly as it converts its own replies (a double stays a double in
-- RESP3 and becomes a bulk string in RESP2).
-- Names: n keys, r the command's reply, m mode, t milliseconds, k key.
redis.setresp(3)
local n=#KEYS
local r=redis.pcall(unpack(ARGV,2+2*n))
if type(r)=='table' and r.err then return r end
if ARGV[1]=='changed' and (r==0 or not r) then return r end
for i=1,n do
local m,t,k=ARGV[2*i],ARGV[2*i+1],KEYS[i]
-- The client's user may lack PEXPIRE on this key (ACL): then the key is left as written.
if redis.acl_check_cmd('pexpire',k,t,m) then redis.pcall('pexpire',k,t,m) end
end
return r
