# Sidekiq's (Debian's ruby-sidekiq) producer or worker through the proxy, for the drain
# test: `produce` pushes N distinct jobs onto the `emails` queue, and for N > 1 two jobs
# that fail (Sidekiq schedules one for a retry and sends the other to the dead set); `work`
# runs Sidekiq's own worker machinery in this process (a Sidekiq::Launcher: its processors
# fetching with BRPOP, its scheduled-job poller and its heartbeat thread, which writes the
# process record and flushes the `stat:*` counters every 5 s, as in production) until the
# jobs were processed and a heartbeat has counted them all, then stops it as a TERM would.
# Prints what the client saw as JSON: errors raised or logged (a refused heartbeat is
# logged, not raised), and for `work` the job numbers processed and what Sidekiq's API
# reads back (`stats`: jobs processed and failed; `retry` and `dead`: the sizes of those
# sets; `beat`: the process seen by Sidekiq::ProcessSet after the jobs).
# Usage: ruby sidekiq_drain.rb <proxy port> produce|work <N>
require "json"
require "sidekiq"
require "sidekiq/api"
require "sidekiq/launcher"

port, mode, n = ARGV[0].to_i, ARGV[1], ARGV[2].to_i
failing = n > 1 ? 2 : 0
$stderr.reopen(File::NULL) # Sidekiq 6.4 warns about Redis#sadd on every push
Sidekiq.redis = { url: "redis://127.0.0.1:#{port}/0", size: 10 }

PROCESSED = []
LOCK = Mutex.new

class DrainJob
  include Sidekiq::Worker
  sidekiq_options queue: "emails"

  def perform(i)
    LOCK.synchronize { PROCESSED << i }
  end
end

# Raised by the failing jobs: expected, so not reported as an error.
class ExpectedFailure < StandardError; end

# Fails once; Sidekiq schedules its retry (ZADD retry) in 15 s or more.
class RetriedJob
  include Sidekiq::Worker
  sidekiq_options queue: "emails", retry: 1

  def perform
    raise ExpectedFailure, "retried"
  end
end

# Fails with no retry left; Sidekiq adds it to the dead set (ZADD dead).
class DeadJob
  include Sidekiq::Worker
  sidekiq_options queue: "emails", retry: 0

  def perform
    raise ExpectedFailure, "dead"
  end
end

# What Sidekiq logs at WARN or above: a refused heartbeat or stats flush, a job's error.
class Logged
  attr_reader :lines

  def initialize
    @lines = []
    @lock = Mutex.new
  end

  def write(line)
    @lock.synchronize { @lines << line.strip }
  end

  def close; end
end

errors = []
if mode == "produce"
  n.times do |i|
    DrainJob.perform_async(i)
  rescue => e # reported, not raised
    errors << e.message
  end
  if failing > 0
    begin
      RetriedJob.perform_async
      DeadJob.perform_async
    rescue => e
      errors << e.message
    end
  end
  puts JSON.generate("errors" => errors)
  exit
end

logged = Logged.new
Sidekiq.logger = Sidekiq::Logger.new(logged, level: Logger::WARN)
Sidekiq.error_handlers.clear
Sidekiq.error_handlers << lambda do |ex, _context|
  LOCK.synchronize { errors << "#{ex.class}: #{ex.message}" } unless ex.is_a?(ExpectedFailure)
end
Sidekiq.options[:queues] = ["emails"]
Sidekiq.options[:concurrency] = 5
Sidekiq.options[:timeout] = 5
launcher = Sidekiq::Launcher.new(Sidekiq.options)
identity = launcher.identity
launcher.run

DEADLINE = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60

# Whether the block came true before the deadline; an error recorded if not.
def wait(what, errors)
  until yield
    if Process.clock_gettime(Process::CLOCK_MONOTONIC) > DEADLINE
      errors << "timed out waiting for #{what}"
      return false
    end
    sleep 0.1
  end
  true
end

wait("#{n} jobs", errors) { LOCK.synchronize { PROCESSED.size >= n } }
wait("the failed jobs", errors) { Sidekiq::RetrySet.new.size + Sidekiq::DeadSet.new.size >= failing }
done_at = Time.now.to_f
# The heartbeat after the last job counts it in `stat:processed` and writes the process
# record; both read back through the proxy with Sidekiq's API.
begin
  wait("a heartbeat counting the jobs", errors) { Sidekiq::Stats.new.processed >= n + failing }
  wait("a heartbeat after the jobs", errors) do
    Sidekiq::ProcessSet.new(false).any? { |p| p["identity"] == identity && p["beat"] > done_at }
  end
  stats = Sidekiq::Stats.new
  beat = Sidekiq::ProcessSet.new(false).any? { |p| p["identity"] == identity }
rescue => e
  errors << e.message
end
launcher.stop
errors.concat(logged.lines)
puts JSON.generate(
  "errors" => errors,
  "processed" => LOCK.synchronize { PROCESSED.sort },
  "stats" => { "processed" => stats&.processed, "failed" => stats&.failed },
  "retry" => stats&.retry_size,
  "dead" => stats&.dead_size,
  "beat" => beat,
)
