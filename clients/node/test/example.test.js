'use strict';
// Runs against a live callrec server: CALLREC_SERVER=127.0.0.1:50051 npm test
// Without CALLREC_SERVER every test is skipped (with a message saying so).
// Against a server with TLS and tokens, set CALLREC_TOKEN (an admin one) and CALLREC_TLS_CA
// (plus CALLREC_TLS_CLIENT_CERT / CALLREC_TLS_CLIENT_KEY under mTLS), as for the Python CLI.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { connect, connectionOptionsFromEnv } = require('../client');

const SERVER = process.env.CALLREC_SERVER || '';
const skip = SERVER ? false : 'CALLREC_SERVER is not set: start a server (`make run`) and run `CALLREC_SERVER=127.0.0.1:50051 npm test`';
const EXAMPLE = path.resolve(__dirname, '..', 'example.js');

test('example.js records a call and reads its RecordingStateChanged events', { skip, timeout: 120000 }, async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [EXAMPLE, '--server', SERVER, '--json'], { timeout: 90000 });
  const summary = JSON.parse(stdout);
  assert.match(summary.server_call_id, /^node-example-/);
  assert.ok(summary.recording_id, 'a recording id');
  assert.deepEqual(summary.states.slice(0, 3), ['RECORDING_STATE_ACTIVE', 'RECORDING_STATE_INACTIVE', 'RECORDING_STATE_ACTIVE']);
  assert.ok(['RECORDING_STATE_STOPPING', 'RECORDING_STATE_COMPLETED'].includes(summary.states[3]), `after stop: ${summary.states[3]}`);
  assert.equal(summary.events.length, 4);
  const states = summary.events.map((e) => JSON.parse(e.json).data.state);
  assert.deepEqual(states, ['active', 'inactive', 'active', 'inactive']);
  for (let i = 1; i < summary.events.length; i += 1) {
    assert.ok(summary.events[i].sequence > summary.events[i - 1].sequence, 'increasing sequence');
  }
  for (const e of summary.events) {
    assert.equal(e.event_type, 'Microsoft.Communication.RecordingStateChanged');
    assert.equal(JSON.parse(e.json).data.recordingId, summary.recording_id);
  }
});

test('client.js maps server errors to CallrecError with the status name', { skip }, async () => {
  const callrec = connect(SERVER, connectionOptionsFromEnv());
  try {
    await assert.rejects(callrec.getRecordingState({ recording_id: 'no-such-recording' }),
      (err) => err.name === 'CallrecError' && err.codeName === 'NOT_FOUND');
    await assert.rejects(callrec.startRecording({ server_call_id: `never-opened-${process.pid}-${Date.now()}` }),
      (err) => err.codeName === 'NOT_FOUND');
  } finally {
    callrec.close();
  }
});

test('openGateway resolves on opened and the recording shows up in ListRecordings', { skip }, async () => {
  const callrec = connect(SERVER, connectionOptionsFromEnv());
  const serverCallId = `node-test-${process.pid}-${Date.now()}`;
  try {
    const gateway = await callrec.openGateway(serverCallId, 'node-test-gw');
    assert.equal(gateway.opened.server_call_id, serverCallId);
    assert.ok(gateway.opened.call_connection_id);
    await gateway.join('bob');
    const rec = await callrec.startRecording({
      server_call_id: serverCallId,
      content_type: 'RECORDING_CONTENT_TYPE_AUDIO',
      channel_type: 'RECORDING_CHANNEL_TYPE_MIXED',
      format: 'RECORDING_FORMAT_MP3',
    });
    assert.equal(rec.state, 'RECORDING_STATE_ACTIVE');
    assert.equal(rec.format, 'RECORDING_FORMAT_MP3');
    const page = await callrec.listRecordings({ server_call_id: serverCallId });
    assert.deepEqual(page.recordings.map((r) => r.recording_id), [rec.recording_id]);
    await callrec.stopRecording({ recording_id: rec.recording_id });
    const status = await gateway.end();
    assert.equal(status.code, 0);
  } finally {
    callrec.close();
  }
});
