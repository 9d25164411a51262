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

/** 20 ms of PCM16LE 16 kHz mono (320 samples = 640 bytes), every sample `value`. */
function pcmFrame(value) {
  const frame = Buffer.alloc(640);
  for (let i = 0; i < 320; i += 1) frame.writeInt16LE(value, i * 2);
  return frame;
}

/**
 * Resolves with the first `ack` (in `gateway.responses` already or arriving later) for which
 * `predicate(ack)` holds; rejects after `timeoutMs` with the last ack seen, or when the stream ends.
 */
function waitForAck(gateway, predicate, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    let lastAck = null;
    let settled = false;
    const finish = (fn, value) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        fn(value);
      }
    };
    const check = (response) => {
      if (response.message !== 'ack') return;
      lastAck = response.ack;
      if (predicate(response.ack)) finish(resolve, response.ack);
    };
    const timer = setTimeout(() => finish(reject, new Error(
      `no matching ack within ${timeoutMs} ms; last ack: ${JSON.stringify(lastAck)}`)), timeoutMs);
    for (const response of gateway.responses) check(response);
    gateway.onResponse(check);
    gateway.done.then((status) => finish(reject, gateway.error
      || new Error(`StreamMedia ended (code ${status.code}: ${status.details}) before a matching ack`)));
  });
}

test('batch sends one media_batch per tick and every frame is counted', { skip, timeout: 60000 }, async () => {
  const callrec = connect(SERVER, connectionOptionsFromEnv());
  const serverCallId = `node-batch-${process.pid}-${Date.now()}`;
  const participants = [
    { id: 'ann', frame: pcmFrame(3000) },
    { id: 'ben', frame: pcmFrame(-2000) },
    { id: 'cat', frame: pcmFrame(1000) },
  ];
  try {
    const gateway = await callrec.openGateway(serverCallId, 'node-batch-gw');
    for (const p of participants) await gateway.join(p.id);
    const rec = await callrec.startRecording({
      server_call_id: serverCallId,
      content_type: 'RECORDING_CONTENT_TYPE_AUDIO',
      channel_type: 'RECORDING_CHANNEL_TYPE_UNMIXED',
      format: 'RECORDING_FORMAT_WAV',
    });
    assert.equal(rec.state, 'RECORDING_STATE_ACTIVE');
    const TICKS = 50;
    for (let tick = 0; tick < TICKS; tick += 1) {
      await gateway.batch({
        audio: participants.map((p) => ({ participantId: p.id, sequence: tick + 1, timestampUs: tick * 20000, data: p.frame })),
      });
    }
    const ack = await waitForAck(gateway, (a) => participants.every(
      (p) => a.participants.some((pa) => pa.participant_id === p.id && pa.received === String(TICKS))));
    for (const p of participants) {
      const pa = ack.participants.find((x) => x.participant_id === p.id);
      assert.equal(pa.last_audio_sequence, String(TICKS));
      assert.deepEqual(pa.rejected_by_reason, {});
    }
    assert.equal(gateway.responses.filter((r) => r.message === 'warning').length, 0,
      `warnings: ${JSON.stringify(gateway.responses.filter((r) => r.message === 'warning'))}`);
    await callrec.stopRecording({ recording_id: rec.recording_id });
    const status = await gateway.end();
    assert.equal(status.code, 0);
  } finally {
    callrec.close();
  }
});

test('batch with a participant that never joined ends the stream with FAILED_PRECONDITION', { skip }, async () => {
  const callrec = connect(SERVER, connectionOptionsFromEnv());
  const serverCallId = `node-batch-bad-${process.pid}-${Date.now()}`;
  try {
    const gateway = await callrec.openGateway(serverCallId, 'node-batch-gw');
    await gateway.join('dan');
    assert.throws(() => gateway.batch({ audio: 'not an array' }), TypeError);
    assert.throws(() => gateway.batch({ video: {} }), TypeError);
    await gateway.batch({
      audio: [
        { participantId: 'dan', sequence: 1, timestampUs: 0, data: pcmFrame(500) },
        { participantId: 'ghost', sequence: 1, timestampUs: 0, data: pcmFrame(500) },
      ],
    });
    // The server aborts the stream on the bad frame: wait for that status, then end() reports it.
    let timer;
    const status = await Promise.race([gateway.done, new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('the server did not end the stream within 10 s')), 10000);
    })]).finally(() => clearTimeout(timer));
    assert.notEqual(status.code, 0);
    await assert.rejects(gateway.end(), (err) => err.name === 'CallrecError'
      && err.codeName === 'FAILED_PRECONDITION' && /ghost/.test(err.details) && /join/.test(err.details));
  } finally {
    callrec.close();
  }
});
