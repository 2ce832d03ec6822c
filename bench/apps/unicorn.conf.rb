# Ruby Unicorn config for the bench: everything from BENCH_* variables, the rest default.
require 'socket'

worker_processes Integer(ENV.fetch('BENCH_WORKERS', '4'))
listen ENV.fetch('BENCH_LISTEN')
preload_app ENV['BENCH_PRELOAD'] == '1'
timeout Integer(ENV['BENCH_TIMEOUT']) if ENV['BENCH_TIMEOUT'] && !ENV['BENCH_TIMEOUT'].empty?

def bench_announce(kind = 'ready', *extra)
  now = Process.clock_gettime(Process::CLOCK_MONOTONIC) # the moment of readiness
  path = ENV['BENCH_READY_SOCK'] or return
  s = Socket.new(:UNIX, :DGRAM)
  begin
    s.send(([kind, Process.pid.to_s, now.to_s] + extra.map(&:to_s)).join(' '), 0,
           Socket.sockaddr_un(path))
  ensure
    s.close
  end
end

# Called in the worker after the app is built, right before its accept loop.
after_worker_ready do |server, worker|
  server.logger.info("worker=#{worker.nr} ready")
  if ENV['BENCH_HEAP'] == '1'
    GC.start
    bench_announce('ready', $bench_data.size, $bench_heap_bytes)
  else
    bench_announce
  end
end
