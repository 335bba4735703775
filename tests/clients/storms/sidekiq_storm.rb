# A retry storm from Sidekiq (Debian's ruby-sidekiq) through the proxy: client A enqueues
# the same job 1,000 times, interleaved with 100 distinct jobs and a re-push of one job id;
# client B (another client name) enqueues the same job 3 times. Prints what the clients
# saw and what Redis holds, read directly, as JSON.
# Usage: ruby sidekiq_storm.rb <proxy port> <redis port>
require "json"
require "sidekiq"
require "sidekiq/api"

proxy_port, redis_port = ARGV.map(&:to_i)
$stderr.reopen(File::NULL) # Sidekiq 6.4 warns about Redis#sadd on every push

class HardJob
  include Sidekiq::Worker
  def perform(account, action); end
end

def client(port, name)
  pool = ConnectionPool.new(size: 2) { Redis.new(host: "127.0.0.1", port: port, id: name) }
  Sidekiq::Client.new(pool)
end

a = client(proxy_port, "storm-a")
b = client(proxy_port, "storm-b")
errors = []
jids = []
push = lambda do |c, args, extra = {}|
  jids << c.push({ "class" => HardJob, "args" => args }.merge(extra))
rescue => e
  errors << e.message
end

1000.times do |i|
  push.call(a, [42, "sync"])
  push.call(a, [i, "distinct"]) if i % 10 == 0
end
# A job moved again to its queue under the same jid (as the retry and scheduled pollers do).
2.times { push.call(a, [7, "retried"], { "jid" => "0123456789abcdef01234567" }) }
3.times { push.call(b, [42, "sync"]) }

direct = Redis.new(host: "127.0.0.1", port: redis_port)
jobs = direct.lrange("queue:default", 0, -1).map { |j| JSON.parse(j) }
puts JSON.generate(
  "errors" => errors,
  "returned_jids" => jids.compact.size,
  "queued" => jobs.size,
  "same_job" => jobs.count { |j| j["args"] == [42, "sync"] },
  "distinct" => jobs.count { |j| j["args"][1] == "distinct" },
  "repushed" => jobs.count { |j| j["jid"] == "0123456789abcdef01234567" },
)
