'use strict';
// The routing header (cluster mode, SPEC §8): client.js sends `x-callrec-server-call-id` on every
// call-scoped RPC, so a proxy hashing on it routes a call's streams and control RPCs to one node.
// These tests start their own recording gRPC server on 127.0.0.1 (canned answers; it notes each
// RPC's method and metadata), so they run with or without CALLREC_SERVER.

const test = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const {
  connect, loadCallrecPackage, routingValue, RecordingCalls, ROUTING_HEADER, DEFAULT_RECORDING_CACHE_SIZE,
} = require('../client');

const TOKEN = 't0ken';
const LOCATION = 'file://localhost/recordings/x/0-audio.wav';

/** A recording server: `seen` holds {method, route, auth} per RPC, in the order they started. */
async function startRecordingServer() {
  const pkg = loadCallrecPackage();
  const seen = [];
  const callOf = new Map([['rec-preknown', 'call-z']]);
  let started = 0;
  const note = (method, call) => {
    const routes = call.metadata.get(ROUTING_HEADER);
    assert.ok(routes.length <= 1, `${method}: ${ROUTING_HEADER} sent ${routes.length} times`);
    seen.push({ method, route: routes.length ? routes[0] : null, auth: call.metadata.get('authorization')[0] || null });
  };
  const recording = (id) => ({ recording_id: id, server_call_id: callOf.get(id) || '', state: 'RECORDING_STATE_ACTIVE' });
  const unary = (method, answer) => (call, callback) => {
    note(method, call);
    callback(null, answer(call.request));
  };
  const byId = (request) => ({ recording: recording(request.recording_id) });
  const server = new grpc.Server();
  server.addService(pkg.RecordingService.service, {
    StartRecording: unary('StartRecording', (request) => {
      started += 1;
      callOf.set(`rec-${started}`, request.server_call_id);
      return { recording: recording(`rec-${started}`) };
    }),
    GetRecordingState: unary('GetRecordingState', byId),
    PauseRecording: unary('PauseRecording', byId),
    ResumeRecording: unary('ResumeRecording', byId),
    StopRecording: unary('StopRecording', byId),
    ListRecordings: unary('ListRecordings', (request) => {
      if (request.server_call_id) {
        return { recordings: [...callOf].filter(([, c]) => c === request.server_call_id).map(([r]) => recording(r)) };
      }
      const n = request.page_size || 2;
      for (let i = 0; i < n; i += 1) callOf.set(`rec-list-${i}`, `call-list-${i}`);
      return { recordings: Array.from({ length: n }, (_, i) => recording(`rec-list-${i}`)) };
    }),
  });
  server.addService(pkg.MediaService.service, {
    StreamMedia(call) {
      note('StreamMedia', call);
      call.on('data', (request) => {
        if (request.message === 'open') call.write({ opened: { server_call_id: request.open.server_call_id, call_connection_id: 'conn-1' } });
        if (request.message === 'end') call.end();
      });
      call.on('end', () => call.end());
    },
  });
  server.addService(pkg.EventService.service, {
    SubscribeEvents(call) {
      note('SubscribeEvents', call);
      call.write({ event: { sequence: '1', id: 'e1', event_type: 'Microsoft.Communication.RecordingStateChanged', json: '{}' } });
      call.end();
    },
  });
  server.addService(pkg.ContentService.service, {
    DownloadContent(call) {
      note('DownloadContent', call);
      call.write({ data: Buffer.from('RIFF'), offset: '0', total_size: '4', content_type: 'audio/wav' });
      call.end();
    },
    DeleteContent: unary('DeleteContent', (request) => ({ deleted_locations: [request.location] })),
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  return {
    target: `127.0.0.1:${port}`,
    /** The [method, route] pairs seen since the last take(). */
    take() {
      const pairs = seen.map((s) => [s.method, s.route]);
      seen.length = 0;
      return pairs;
    },
    seen,
    stop: () => new Promise((resolve) => server.tryShutdown(resolve)),
  };
}

test('every call-scoped RPC carries the call; the rest carry none', async () => {
  const server = await startRecordingServer();
  const callrec = connect(server.target, { token: TOKEN });
  try {
    const gateway = await callrec.openGateway('call-a', 'gw-1');
    assert.equal(gateway.opened.server_call_id, 'call-a');
    await gateway.end();
    const rec = await callrec.startRecording({ server_call_id: 'call-a' });
    await callrec.getRecordingState({ recording_id: rec.recording_id });
    await callrec.pauseRecording({ recording_id: rec.recording_id });
    await callrec.resumeRecording({ recording_id: rec.recording_id });
    await callrec.stopRecording({ recording_id: rec.recording_id }, { serverCallId: 'call-b' });
    await callrec.getRecordingState({ recording_id: 'rec-preknown' });
    await callrec.pauseRecording({ recording_id: 'rec-preknown' });
    const page = await callrec.listRecordings({ server_call_id: 'call-a' });
    assert.deepEqual(page.recordings.map((r) => r.recording_id), [rec.recording_id]);
    await callrec.listRecordings();
    await callrec.stopRecording({ recording_id: 'rec-list-1' });
    for (const filters of [{ server_call_id: 'call-a' }, { recording_id: rec.recording_id }]) {
      const sequences = [];
      for await (const event of callrec.subscribeEvents(filters)) sequences.push(event.sequence);
      assert.deepEqual(sequences, ['1']);
    }
    for (const options of [{ serverCallId: 'call-a' }, {}]) {
      const pieces = [];
      for await (const piece of callrec.downloadContent({ location: LOCATION }, options)) pieces.push(piece.data);
      assert.equal(Buffer.concat(pieces).toString(), 'RIFF');
      assert.deepEqual((await callrec.deleteContent({ location: LOCATION }, options)).deleted_locations, [LOCATION]);
    }
    const auths = server.seen.map((s) => s.auth);
    assert.deepEqual(server.take(), [
      ['StreamMedia', 'call-a'], // sent when the stream is created, before `open`
      ['StartRecording', 'call-a'],
      ['GetRecordingState', 'call-a'], // remembered from StartRecording's answer
      ['PauseRecording', 'call-a'],
      ['ResumeRecording', 'call-a'],
      ['StopRecording', 'call-b'], // { serverCallId } wins over the remembered call
      ['GetRecordingState', null], // a recording this client never saw: no header ...
      ['PauseRecording', 'call-z'], // ... until an answer names its call
      ['ListRecordings', 'call-a'],
      ['ListRecordings', null],
      ['StopRecording', 'call-list-1'], // learnt from the unfiltered ListRecordings answer
      ['SubscribeEvents', 'call-a'],
      ['SubscribeEvents', null], // filtered by recording only: not routed
      ['DownloadContent', 'call-a'],
      ['DeleteContent', 'call-a'],
      ['DownloadContent', null],
      ['DeleteContent', null],
    ]);
    assert.ok(auths.every((a) => a === `Bearer ${TOKEN}`), `authorization beside the routing header: ${auths}`);
    assert.equal(callrec.recordingCalls.get(rec.recording_id), 'call-a');
    const raw = callrec.metadata('call-a');
    assert.deepEqual(raw.get(ROUTING_HEADER), ['call-a']);
    assert.deepEqual(callrec.metadata().get(ROUTING_HEADER), []);
  } finally {
    callrec.close();
    await server.stop();
  }
});

test('the recording cache is bounded: the least recently used recording is forgotten first', async () => {
  const server = await startRecordingServer();
  const callrec = connect(server.target, { recordingCacheSize: 3 });
  try {
    await callrec.listRecordings({ page_size: 5 }); // rec-list-0..4: only the last three fit
    assert.equal(callrec.recordingCalls.size, 3);
    await callrec.getRecordingState({ recording_id: 'rec-list-2' }); // a use: now the most recent
    await callrec.startRecording({ server_call_id: 'call-new' }); // rec-1 pushes out rec-list-3
    for (const id of ['rec-list-4', 'rec-list-2', 'rec-1', 'rec-list-3', 'rec-list-0']) {
      await callrec.getRecordingState({ recording_id: id });
    }
    assert.deepEqual(server.take(), [
      ['ListRecordings', null],
      ['GetRecordingState', 'call-list-2'],
      ['StartRecording', 'call-new'],
      ['GetRecordingState', 'call-list-4'],
      ['GetRecordingState', 'call-list-2'],
      ['GetRecordingState', 'call-new'],
      ['GetRecordingState', null], // rec-list-3: evicted
      ['GetRecordingState', null], // rec-list-0: never fitted
    ]);
    assert.equal(callrec.recordingCalls.size, 3);
  } finally {
    callrec.close();
    await server.stop();
  }
});

test('RecordingCalls defaults to 10 000 entries and rejects a size below one', () => {
  assert.equal(DEFAULT_RECORDING_CACHE_SIZE, 10000);
  const calls = new RecordingCalls();
  for (let i = 0; i <= 10000; i += 1) calls.set(`r${i}`, `c${i}`);
  assert.equal(calls.size, 10000);
  assert.equal(calls.get('r0'), '');
  assert.equal(calls.get('r10000'), 'c10000');
  assert.equal(calls.resolve('r10000', 'explicit'), 'explicit');
  calls.set('', 'c');
  calls.set('r', '');
  assert.equal(calls.size, 10000);
  assert.throws(() => new RecordingCalls(0), RangeError);
});

test('routing values: printable ASCII as is, anything else percent-encoded as the Python client does', () => {
  assert.equal(ROUTING_HEADER, 'x-callrec-server-call-id');
  assert.equal(routingValue('call-1/a:b c'), 'call-1/a:b c');
  assert.equal(routingValue('réunion 1'), 'r%C3%A9union%201');
  assert.equal(routingValue(' padded'), '%20padded');
  assert.equal(routingValue('a\tb'), 'a%09b');
});
