const { connect } = require('/work/main/clients/node/client.js');
const [target, n, interval, rid] = process.argv.slice(2);
const c = connect(target);
(async () => {
  const out = [];
  for (let i = 0; i < +n; i++) {
    const t = process.hrtime.bigint();
    try { await c.getRecordingState({ recording_id: rid }); } catch (e) {}
    out.push(Number(process.hrtime.bigint() - t) / 1e6);
    await new Promise((r) => setTimeout(r, +interval * 1000));
  }
  const xs = out.slice(3).sort((a, b) => a - b); const k = (p) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))];
  console.log(`node p50 ${k(.5).toFixed(2)} p90 ${k(.9).toFixed(2)} p99 ${k(.99).toFixed(2)} max ${xs[xs.length-1].toFixed(2)} (n=${xs.length})`);
  c.close();
})();
