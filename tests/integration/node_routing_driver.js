'use strict';
// Drives clients/node/client.js against the recording server of tests/integration/test_routing_header.py,
// which checks the x-callrec-server-call-id header of each RPC in the order made here.
//   node node_routing_driver.js HOST:PORT TOKEN   -> prints one JSON summary line

const path = require('node:path');
const { connect, ROUTING_HEADER } = require(path.resolve(__dirname, '..', '..', 'clients', 'node', 'client'));

async function main() {
  const [target, token] = process.argv.slice(2);
  const callrec = connect(target, { token });
  const small = connect(target, { token, recordingCacheSize: 3 });
  const location = 'file://localhost/recordings/x/0-audio.wav';
  try {
    const gateway = await callrec.openGateway('call-node', 'gw-node');
    await gateway.end();
    const rec = await callrec.startRecording({ server_call_id: 'call-node' });
    await callrec.getRecordingState({ recording_id: rec.recording_id });
    await callrec.pauseRecording({ recording_id: 'rec-preknown' });
    await callrec.resumeRecording({ recording_id: 'rec-preknown' });
    await callrec.stopRecording({ recording_id: rec.recording_id }, { serverCallId: 'call-explicit' });
    await callrec.listRecordings({ server_call_id: 'call-node' });
    await callrec.listRecordings({});
    await callrec.getRecordingState({ recording_id: 'rec-list-1' });
    let events = 0;
    for (const filters of [{ server_call_id: 'call-node' }, { recording_id: rec.recording_id }]) {
      for await (const event of callrec.subscribeEvents(filters)) events += Number(event.sequence);
    }
    const pieces = [];
    for await (const piece of callrec.downloadContent({ location }, { serverCallId: 'call-node' })) pieces.push(piece.data);
    for await (const piece of callrec.downloadContent({ location })) pieces.push(piece.data);
    await callrec.deleteContent({ location }, { serverCallId: 'call-node' });
    await callrec.deleteContent({ location });
    await callrec.startRecording({ server_call_id: 'réunion 1' });
    await small.listRecordings({ page_size: 5 });
    await small.getRecordingState({ recording_id: 'rec-list-0' });
    await small.getRecordingState({ recording_id: 'rec-list-4' });
    process.stdout.write(`${JSON.stringify({
      recording_id: rec.recording_id,
      opened: gateway.opened.server_call_id,
      downloaded: Buffer.concat(pieces).toString(),
      events,
      small_cache_size: small.recordingCalls.size,
      exported_header: ROUTING_HEADER,
    })}\n`);
  } finally {
    callrec.close();
    small.close();
  }
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
