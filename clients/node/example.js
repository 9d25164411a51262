#!/usr/bin/env node
'use strict';
/**
 * callrec Node.js example: one call, one recording, from gateway to events.
 *
 *   node example.js --server 127.0.0.1:50051 [--json] [--server-call-id ID] [--timeout SECONDS]
 *                   [--token JWT] [--tls] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
 *
 * 1. opens a call as a media gateway (StreamMedia `open` -> `opened`) and joins a participant;
 * 2. streams ~1 s of 16 kHz PCM16LE audio (a 440 Hz tone, with silence while paused) in 20 ms frames;
 * 3. StartRecording (audio, mixed, wav), PauseRecording, ResumeRecording, StopRecording;
 * 4. ends the gateway stream;
 * 5. reads the recording's RecordingStateChanged events from SubscribeEvents (from_oldest).
 *
 * With --json it prints one JSON object at the end:
 *   {server_call_id, recording_id, states: [state after each RPC], events: [{sequence, event_type, json}]}
 * Exit code 0 on success, 1 on any error (with a readable message on stderr), 2 on bad usage.
 */

const crypto = require('node:crypto');
const { connect, connectionOptionsFromEnv } = require('./client');

const SAMPLE_RATE = 16000;
const FRAME_MS = 20;
const SAMPLES_PER_FRAME = (SAMPLE_RATE * FRAME_MS) / 1000;
const STATE_CHANGED = 'Microsoft.Communication.RecordingStateChanged';
/** One RecordingStateChanged per control RPC: start (active), pause, resume, stop (inactive). */
const EXPECTED_STATE_EVENTS = 4;

const USAGE = `usage: node example.js --server HOST:PORT [--json] [--server-call-id ID] [--timeout SECONDS]
                  [--token JWT] [--tls] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]

  --server HOST:PORT     callrec server; default 127.0.0.1:50051
  --json                 print one JSON summary object instead of progress lines
  --server-call-id ID    call id to open (default: a new unique one)
  --timeout SECONDS      how long to wait for each RPC and for the events (default 30)
  --token JWT            bearer token (an admin one: the example is gateway and controller at once);
                         default: $CALLREC_TOKEN
  --tls                  TLS, trusting the system's CAs (default: plaintext, or $CALLREC_TLS)
  --tls-ca FILE          TLS, trusting this PEM CA bundle (default: $CALLREC_TLS_CA)
  --tls-cert FILE        client certificate for mTLS (default: $CALLREC_TLS_CLIENT_CERT)
  --tls-key FILE         its private key (default: $CALLREC_TLS_CLIENT_KEY)`;

class UsageError extends Error {}

function parseArgs(argv) {
  const fromEnv = connectionOptionsFromEnv();
  const args = { server: '127.0.0.1:50051', json: false, serverCallId: '', timeoutS: 30, token: fromEnv.token, tls: fromEnv.tls };
  const tlsFiles = () => (typeof args.tls === 'object' && args.tls !== null ? args.tls : (args.tls = { ca: '', cert: '', key: '' }));
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      i += 1;
      if (i >= argv.length) throw new UsageError(`${flag} needs a value`);
      return argv[i];
    };
    switch (flag) {
      case '--server': args.server = value(); break;
      case '--json': args.json = true; break;
      case '--server-call-id': args.serverCallId = value(); break;
      case '--token': args.token = value(); break;
      case '--tls': if (!args.tls) args.tls = true; break;
      case '--tls-ca': tlsFiles().ca = value(); break;
      case '--tls-cert': tlsFiles().cert = value(); break;
      case '--tls-key': tlsFiles().key = value(); break;
      case '--timeout': {
        args.timeoutS = Number(value());
        if (!(args.timeoutS > 0)) throw new UsageError('--timeout must be a positive number of seconds');
        break;
      }
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      default: throw new UsageError(`unknown argument: ${arg}`);
    }
  }
  if (!/^[^:\s]+:\d+$/.test(args.server) && !/^\[[^\]]+\]:\d+$/.test(args.server)) {
    throw new UsageError(`--server must be HOST:PORT, got '${args.server}'`);
  }
  return args;
}

/** One 20 ms frame of PCM16LE mono: a 440 Hz tone at -12 dBFS, or silence. */
function pcmFrame(frameIndex, tone) {
  const buf = Buffer.alloc(SAMPLES_PER_FRAME * 2);
  if (tone) {
    for (let i = 0; i < SAMPLES_PER_FRAME; i += 1) {
      const n = frameIndex * SAMPLES_PER_FRAME + i;
      buf.writeInt16LE(Math.round(8192 * Math.sin((2 * Math.PI * 440 * n) / SAMPLE_RATE)), i * 2);
    }
  }
  return buf;
}

async function run(args) {
  const log = args.json ? () => {} : (line) => console.log(line);
  const serverCallId = args.serverCallId || `node-example-${crypto.randomUUID().slice(0, 12)}`;
  const gatewayId = `node-example-gw-${process.pid}`;
  const participantId = 'alice';
  const callrec = connect(args.server, { timeoutMs: args.timeoutS * 1000, token: args.token, tls: args.tls });
  const states = [];
  let gateway = null;
  let frame = 0;
  // Streams `count` frames on the gateway's clock (capture timestamps 20 ms apart).
  const sendFrames = async (count, tone) => {
    for (let k = 0; k < count; k += 1, frame += 1) {
      await gateway.audio(participantId, frame + 1, frame * FRAME_MS * 1000, pcmFrame(frame, tone));
    }
  };
  try {
    log(`server ${args.server}: opening call ${serverCallId} as gateway ${gatewayId}`);
    gateway = await callrec.openGateway(serverCallId, gatewayId);
    log(`opened (call_connection_id ${gateway.opened.call_connection_id})`);
    await gateway.join(participantId, { displayName: 'Alice (Node example)' });
    await sendFrames(10, true);

    let rec = await callrec.startRecording({
      server_call_id: serverCallId,
      content_type: 'RECORDING_CONTENT_TYPE_AUDIO',
      channel_type: 'RECORDING_CHANNEL_TYPE_MIXED',
      format: 'RECORDING_FORMAT_WAV',
    });
    const recordingId = rec.recording_id;
    states.push(rec.state);
    log(`StartRecording  -> ${recordingId} ${rec.state}`);
    await sendFrames(15, true);

    rec = await callrec.pauseRecording({ recording_id: recordingId });
    states.push(rec.state);
    log(`PauseRecording  -> ${rec.state}`);
    await sendFrames(10, false);

    rec = await callrec.resumeRecording({ recording_id: recordingId });
    states.push(rec.state);
    log(`ResumeRecording -> ${rec.state}`);
    await sendFrames(15, true);

    rec = await callrec.stopRecording({ recording_id: recordingId });
    states.push(rec.state);
    log(`StopRecording   -> ${rec.state}`);

    await gateway.end('example finished', args.timeoutS * 1000);
    log(`gateway stream ended after ${frame} audio frames (${(frame * FRAME_MS) / 1000} s)`);

    const events = await readStateEvents(callrec, recordingId, args.timeoutS * 1000);
    for (const e of events) log(`event #${e.sequence} ${e.event_type} state=${JSON.parse(e.json).data.state}`);

    if (args.json) {
      console.log(JSON.stringify({ server_call_id: serverCallId, recording_id: recordingId, states, events }));
    }
  } finally {
    if (gateway !== null && gateway.status === null) gateway.cancel();
    callrec.close();
  }
}

/** The recording's RecordingStateChanged events, replayed from the durable log. */
async function readStateEvents(callrec, recordingId, timeoutMs) {
  const subscription = callrec.subscribeEvents({
    event_types: [STATE_CHANGED],
    recording_id: recordingId,
    from_oldest: true,
  });
  const events = [];
  const timer = setTimeout(() => subscription.cancel(), timeoutMs);
  try {
    for await (const event of subscription) {
      events.push({ sequence: Number(event.sequence), event_type: event.event_type, json: event.json });
      if (events.length >= EXPECTED_STATE_EVENTS) break;
    }
  } finally {
    clearTimeout(timer);
    subscription.cancel();
  }
  if (events.length < EXPECTED_STATE_EVENTS) {
    throw new Error(`SubscribeEvents: got ${events.length} of ${EXPECTED_STATE_EVENTS} RecordingStateChanged events `
      + `for ${recordingId} within ${timeoutMs / 1000} s`);
  }
  return events;
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`example.js: ${err.message}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  try {
    await run(args);
  } catch (err) {
    let message = err && err.message ? err.message : String(err);
    if (err && err.codeName === 'UNAVAILABLE') message += ` (is a callrec server listening on ${args.server}?)`;
    console.error(`example.js: error: ${message}`);
    process.exitCode = 1;
  }
}

if (require.main === module) {
  main();
}

module.exports = { parseArgs, run };
