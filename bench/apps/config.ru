# Rack app for the Ruby Unicorn peer. With BENCH_HEAP=1 it builds ~BENCH_HEAP_MB
# of ordinary Ruby objects at load time (in the master with preload_app).
if ENV['BENCH_HEAP'] == '1'
  def bench_rss
    File.read('/proc/self/statm').split[1].to_i * 4096
  end
  before = bench_rss
  n = (Float(ENV.fetch('BENCH_HEAP_MB', '100')) * 1024 * 1024 / 315).to_i
  $bench_data = Array.new(n) { |i| { id: i, name: "item-#{i}", tags: [i, -i] } }
  $bench_heap_bytes = bench_rss - before
end
run ->(env) { [200, { 'content-type' => 'text/plain' }, ["ok\n"]] }
