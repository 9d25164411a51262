'use strict';
/**
 * A small promise-based Node.js client for callrec (proto package `callrec.v1`).
 *
 *   const { connect } = require('./client');
 *   const callrec = connect('127.0.0.1:50051');
 *   const gw = await callrec.openGateway('call-1', 'gateway-1');   // StreamMedia: open -> opened
 *   const rec = await callrec.startRecording({ server_call_id: 'call-1', ... });
 *   for await (const event of callrec.subscribeEvents({ recording_id: rec.recording_id, from_oldest: true })) { ... }
 *   callrec.close();
 *
 * Security (a server with TLS and tokens, SPEC §5):
 *
 *   const callrec = connect('callrec.example.com:50051', {
 *     tls: { ca: 'ca.pem', cert: 'client.pem', key: 'client.key' },   // file paths or Buffers; cert/key for mTLS
 *     token: process.env.CALLREC_TOKEN,                               // a JWT: `callrec token create`
 *   });
 *
 * `tls: true` trusts the system's CAs; `connectionOptionsFromEnv()` reads CALLREC_TOKEN, CALLREC_TLS,
 * CALLREC_TLS_CA, CALLREC_TLS_CLIENT_CERT and CALLREC_TLS_CLIENT_KEY (as the Python CLI does).
 * The token goes out as `authorization: Bearer <jwt>` metadata on every call (plaintext too).
 *
 * Cluster mode (SPEC §8): every call-scoped RPC also carries `x-callrec-server-call-id`
 * (ROUTING_HEADER), so a proxy hashing on it (HAProxy, Envoy) sends all of a call's streams and
 * control RPCs to the node that owns the call. The value comes from the request (`openGateway`,
 * `startRecording`, `listRecordings` / `subscribeEvents` filtered by `server_call_id`), from the
 * `{ serverCallId }` option of the calls taking a recording id or a location, or from the
 * recording -> call map filled from every Recording received (`recordingCalls`, LRU, 10 000
 * entries by default). Unknown: no header (the node that gets the RPC forwards it to the owner).
 *
 * The .proto files are loaded at run time from ../../protos with @grpc/proto-loader
 * (keepCase, longs as String, enums as String, defaults, oneofs), so field names are the
 * .proto's snake_case names, enums are their names ("RECORDING_STATE_ACTIVE"), uint64/int64
 * are decimal strings and a oneof's set member is named by the oneof field
 * (e.g. `response.message === 'opened'`).
 */

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** Where the .proto files live (the repository's protos/ folder). */
const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['recording', 'media', 'events', 'content'].map((n) => `callrec/v1/${n}.proto`);

/** proto-loader options used for every message this module sends and receives. */
const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
});

/** Default deadline of unary RPCs, in milliseconds. */
const DEFAULT_TIMEOUT_MS = 30000;

/** Metadata key naming the call an RPC belongs to, for the proxy in front of a cluster (SPEC §8). */
const ROUTING_HEADER = 'x-callrec-server-call-id';

/**
 * How many recording -> call pairs a connection remembers: recording ids are opaque (they do not
 * contain the call id), and a long-running back end sees unboundedly many recordings, of which only
 * the recent ones are still paused, stopped or queried.
 */
const DEFAULT_RECORDING_CACHE_SIZE = 10000;

/**
 * The header value for a call: the id itself when it is printable ASCII without edge spaces (every
 * gateway's ids in practice), else `encodeURIComponent` of it (metadata values must be printable
 * ASCII). The Python client encodes identically, so both hash a call to the same node.
 */
function routingValue(serverCallId) {
  const id = String(serverCallId);
  return /^[\x20-\x7e]*$/.test(id) && id === id.trim() ? id : encodeURIComponent(id);
}

/**
 * A bounded LRU map recording_id -> server_call_id (a Map keeps insertion order: the first key is
 * the least recently used).
 */
class RecordingCalls {
  constructor(maxSize = DEFAULT_RECORDING_CACHE_SIZE) {
    if (!(Number.isInteger(maxSize) && maxSize >= 1)) throw new RangeError(`maxSize must be an integer >= 1, got ${maxSize}`);
    this.maxSize = maxSize;
    this.calls = new Map();
  }

  /** How many pairs are remembered. */
  get size() {
    return this.calls.size;
  }

  /** Remembers one pair (the most recently used from now on); empty ids are ignored. */
  set(recordingId, serverCallId) {
    if (!recordingId || !serverCallId) return;
    this.calls.delete(recordingId);
    this.calls.set(recordingId, serverCallId);
    while (this.calls.size > this.maxSize) this.calls.delete(this.calls.keys().next().value);
  }

  /** Remembers the call of each Recording (a response's `recording` or `recordings`). */
  remember(recordings) {
    for (const rec of recordings || []) {
      if (rec) this.set(rec.recording_id, rec.server_call_id);
    }
  }

  /** The recording's call, or '' when unknown; a hit counts as a use. */
  get(recordingId) {
    const serverCallId = this.calls.get(recordingId);
    if (serverCallId === undefined) return '';
    this.calls.delete(recordingId);
    this.calls.set(recordingId, serverCallId);
    return serverCallId;
  }

  /** The call to route a recording's RPC to: `serverCallId` when given (it wins), else the remembered one. */
  resolve(recordingId, serverCallId = '') {
    return serverCallId || (recordingId ? this.get(recordingId) : '');
  }
}

let cachedPackage = null;

/** The loaded `callrec.v1` package object (service client constructors and message types). */
function loadCallrecPackage() {
  if (cachedPackage === null) {
    const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
    cachedPackage = grpc.loadPackageDefinition(definition).callrec.v1;
  }
  return cachedPackage;
}

/**
 * An RPC failure: `code` is the numeric gRPC status code, `codeName` its name
 * ("NOT_FOUND"), `details` the server's message.
 */
class CallrecError extends Error {
  constructor(method, code, details) {
    const codeName = grpc.status[code] || String(code);
    super(`${method} failed: ${codeName}: ${details}`);
    this.name = 'CallrecError';
    this.method = method;
    this.code = code;
    this.codeName = codeName;
    this.details = details;
  }
}

function toCallrecError(method, err) {
  if (err instanceof CallrecError) return err;
  if (err && typeof err.code === 'number') return new CallrecError(method, err.code, err.details || err.message);
  return err instanceof Error ? err : new Error(`${method} failed: ${String(err)}`);
}

/** A short description of a bad argument for an error message ("null", "an object", "a string"). */
function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  const type = typeof value;
  return `${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type}`;
}

function deadlineIn(ms) {
  return new Date(Date.now() + ms);
}

/**
 * Channel credentials for `tls`: falsy -> plaintext; `true` -> TLS trusting the system's CAs;
 * `{ca, cert, key}` (file paths or Buffers) -> TLS trusting `ca`, presenting `cert`/`key` (mTLS).
 */
function channelCredentials(tls) {
  if (!tls) return grpc.credentials.createInsecure();
  if (tls === true) return grpc.credentials.createSsl();
  const read = (value, what) => {
    if (value === undefined || value === null || value === '') return null;
    if (Buffer.isBuffer(value)) return value;
    try {
      return fs.readFileSync(value);
    } catch (err) {
      throw new Error(`tls.${what}: cannot read ${value}: ${err.message}`);
    }
  };
  const cert = read(tls.cert, 'cert');
  const key = read(tls.key, 'key');
  if ((cert === null) !== (key === null)) throw new Error('tls.cert and tls.key go together (mTLS client certificate)');
  return grpc.credentials.createSsl(read(tls.ca, 'ca'), key, cert);
}

/** `{token, tls}` for `connect` from CALLREC_TOKEN, CALLREC_TLS, CALLREC_TLS_CA, CALLREC_TLS_CLIENT_CERT/_KEY. */
function connectionOptionsFromEnv(env = process.env) {
  const ca = env.CALLREC_TLS_CA || '';
  const cert = env.CALLREC_TLS_CLIENT_CERT || '';
  const key = env.CALLREC_TLS_CLIENT_KEY || '';
  const on = ['1', 'true', 'yes'].includes(String(env.CALLREC_TLS || '').toLowerCase());
  const tls = ca || cert || key ? { ca, cert, key } : on;
  return { token: env.CALLREC_TOKEN || '', tls };
}

/**
 * SubscribeEvents as an async iterator of `Event` objects. Breaking out of a
 * `for await` loop (or calling `cancel()`) cancels the RPC; a server error ends the
 * iteration by throwing a CallrecError.
 */
class EventSubscription {
  constructor(call) {
    this.call = call;
    this.cancelled = false;
  }

  cancel() {
    if (!this.cancelled) {
      this.cancelled = true;
      // The cancellation itself surfaces as a CANCELLED 'error' event: expected, ignore it.
      this.call.on('error', () => {});
      this.call.cancel();
    }
  }

  async *[Symbol.asyncIterator]() {
    try {
      for await (const response of this.call) {
        yield response.event;
      }
    } catch (err) {
      if (!(this.cancelled && err && err.code === grpc.status.CANCELLED)) {
        throw toCallrecError('SubscribeEvents', err);
      }
    } finally {
      this.cancel();
    }
  }
}

/**
 * One MediaService.StreamMedia stream of a gateway: `open` has been sent and
 * answered by `opened` (in `this.opened`). Every later response is kept in
 * `this.responses` and emitted to `onResponse` listeners.
 */
class GatewayStream {
  constructor(call, serverCallId, gatewayId) {
    this.call = call;
    this.serverCallId = serverCallId;
    this.gatewayId = gatewayId;
    this.opened = null;
    this.responses = [];
    this.error = null;
    this.status = null;
    this.listeners = [];
    this.done = new Promise((resolve) => {
      call.on('status', (status) => {
        this.status = status;
        resolve(status);
      });
    });
    call.on('data', (response) => {
      this.responses.push(response);
      for (const listener of this.listeners) listener(response);
    });
    call.on('error', (err) => {
      this.error = toCallrecError('StreamMedia', err);
    });
  }

  /** Calls `listener(response)` for every response from now on. */
  onResponse(listener) {
    this.listeners.push(listener);
  }

  /** Sends one StreamMediaRequest; resolves once it was handed to the transport (back-pressure). */
  send(request) {
    return new Promise((resolve, reject) => {
      if (this.status !== null) {
        reject(this.error || new Error('StreamMedia: the stream has already ended'));
        return;
      }
      this.call.write(request, (err) => (err ? reject(toCallrecError('StreamMedia', err)) : resolve()));
    });
  }

  /** A participant enters; `audioFormat` defaults to PCM16LE 16 kHz mono. */
  join(participantId, { displayName = '', audioFormat, videoFormat } = {}) {
    const join = {
      participant_id: participantId,
      display_name: displayName || participantId,
      audio_format: audioFormat || { encoding: 'AUDIO_ENCODING_PCM16LE', sample_rate: 16000, channels: 1 },
    };
    if (videoFormat) join.video_format = videoFormat;
    return this.send({ join });
  }

  /** One audio frame; `sequence` and `timestampUs` may be numbers or decimal strings. */
  audio(participantId, sequence, timestampUs, data) {
    return this.send({
      audio: { participant_id: participantId, sequence: String(sequence), timestamp_us: String(timestampUs), data },
    });
  }

  /**
   * Several frames in one message (`media_batch`): the server handles each exactly as if it
   * were sent alone, all `audio` first, then all `video`, each in array order. A gateway that
   * produces a tick of all its participants at once sends one batch per tick, or several ticks per
   * batch when it has many small calls (one gRPC message costs the server ~0.1 ms of CPU before any
   * work, whatever it holds, so a frame per message caps its throughput).
   *
   *   audio: [{ participantId, sequence, timestampUs, data }, ...]
   *   video: [{ participantId, sequence, timestampUs, data, width, height, keyframe }, ...]
   *
   * `sequence` and `timestampUs` may be numbers or decimal strings. The server accepts at most
   * `[limits] max_batch_frames` frames (audio and video together; 256 by default) per batch: a
   * larger one ends the stream with INVALID_ARGUMENT, so split bigger ticks into several batches.
   * That limit is not checked here (it is a server setting). Throws a TypeError when `audio` or
   * `video` is not an array or holds something other than frame objects.
   */
  batch({ audio = [], video = [] } = {}) {
    const frames = (list, what, toFrame) => {
      if (!Array.isArray(list)) {
        throw new TypeError(`batch: \`${what}\` must be an array of ${what} frame objects, got ${describe(list)}`);
      }
      return list.map((frame, i) => {
        if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) {
          throw new TypeError(`batch: \`${what}[${i}]\` must be ${what === 'audio' ? 'an' : 'a'} ${what} frame object, got ${describe(frame)}`);
        }
        return toFrame(frame);
      });
    };
    const media_batch = {
      audio: frames(audio, 'audio', (f) => ({
        participant_id: f.participantId, sequence: String(f.sequence), timestamp_us: String(f.timestampUs), data: f.data,
      })),
      video: frames(video, 'video', (f) => ({
        participant_id: f.participantId,
        sequence: String(f.sequence),
        timestamp_us: String(f.timestampUs),
        data: f.data,
        width: f.width || 0,
        height: f.height || 0,
        keyframe: Boolean(f.keyframe),
      })),
    };
    return this.send({ media_batch });
  }

  /** A participant leaves. */
  leave(participantId) {
    return this.send({ leave: { participant_id: participantId } });
  }

  /**
   * Ends the call for this gateway (`end {reason}`), half-closes, and waits until the
   * server closed the stream. Rejects with a CallrecError when it closed with an error.
   */
  async end(reason = 'hangup', timeoutMs = DEFAULT_TIMEOUT_MS) {
    if (this.status === null) {
      await this.send({ end: { reason } });
      this.call.end();
    }
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`StreamMedia: the server did not close the stream within ${timeoutMs} ms after end`)), timeoutMs);
    });
    try {
      const status = await Promise.race([this.done, timeout]);
      if (status.code !== grpc.status.OK) throw new CallrecError('StreamMedia', status.code, status.details);
      return status;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Drops the stream without `end` (as a crashed gateway would). */
  cancel() {
    this.call.cancel();
  }
}

/**
 * Connects to a callrec server at `target` ("host:port") and returns an object with
 * promise-based RecordingService calls, `subscribeEvents`, `openGateway`, `downloadContent` and
 * `deleteContent`. Plaintext unless `tls` is given (see channelCredentials); `token` is sent as
 * `authorization: Bearer <token>`. `credentials` (grpc-js ChannelCredentials) overrides `tls`.
 * `recordingCalls` (a RecordingCalls) shares one recording -> call map between connections;
 * `recordingCacheSize` sizes a connection's own.
 */
function connect(target, {
  credentials, tls = null, token = '', timeoutMs = DEFAULT_TIMEOUT_MS,
  recordingCalls = null, recordingCacheSize = DEFAULT_RECORDING_CACHE_SIZE,
} = {}) {
  credentials = credentials || channelCredentials(tls);
  const calls = recordingCalls || new RecordingCalls(recordingCacheSize);
  /** Fresh metadata for each call: the bearer token, if any, and the routing header of a known call. */
  const metadata = (serverCallId = '') => {
    const md = new grpc.Metadata();
    if (token) md.set('authorization', `Bearer ${token}`);
    if (serverCallId) md.set(ROUTING_HEADER, routingValue(serverCallId));
    return md;
  };
  const pkg = loadCallrecPackage();
  const recording = new pkg.RecordingService(target, credentials);
  // The other clients share the first one's channel (one HTTP/2 connection).
  const channelOverride = recording.getChannel();
  const media = new pkg.MediaService(target, credentials, { channelOverride });
  const events = new pkg.EventService(target, credentials, { channelOverride });
  const content = new pkg.ContentService(target, credentials, { channelOverride });

  function unary(client, method, request, serverCallId = '') {
    return new Promise((resolve, reject) => {
      client[method](request, metadata(serverCallId), { deadline: deadlineIn(timeoutMs) }, (err, response) => {
        if (err) reject(toCallrecError(method, err));
        else resolve(response);
      });
    });
  }

  /** A RecordingService RPC on `request.recording_id`, routed to its call; the answer's call is remembered. */
  const recordingCall = (method) => async (request = {}, { serverCallId = '' } = {}) => {
    const { recording: rec } = await unary(recording, method, request, calls.resolve(request.recording_id, serverCallId));
    calls.remember([rec]);
    return rec;
  };

  return {
    target,
    /** The recording -> call map this connection routes recording-id RPCs with (see RecordingCalls). */
    recordingCalls: calls,
    /**
     * grpc.Metadata for a raw call on `clients.*`: the token and, when `serverCallId` is given,
     * the routing header.
     */
    metadata,
    /** StartRecording({server_call_id, content_type, channel_type, format, ...}) -> Recording. */
    async startRecording(request = {}) {
      const { recording: rec } = await unary(recording, 'StartRecording', request, request.server_call_id);
      calls.remember([rec]);
      return rec;
    },
    /** GetRecordingState({recording_id}, {serverCallId}) -> Recording; `serverCallId` routes an unknown recording. */
    getRecordingState: recordingCall('GetRecordingState'),
    /** PauseRecording({recording_id}, {serverCallId}) -> Recording. */
    pauseRecording: recordingCall('PauseRecording'),
    /** ResumeRecording({recording_id}, {serverCallId}) -> Recording. */
    resumeRecording: recordingCall('ResumeRecording'),
    /** StopRecording({recording_id}, {serverCallId}) -> Recording. */
    stopRecording: recordingCall('StopRecording'),
    /** ListRecordings({server_call_id, state, page_size, page_token}) -> {recordings, next_page_token}. */
    async listRecordings(request = {}) {
      const response = await unary(recording, 'ListRecordings', request, request.server_call_id);
      calls.remember(response.recordings);
      return response;
    },

    /**
     * SubscribeEvents({event_types, server_call_id, recording_id, after_sequence, from_oldest})
     * as an async iterator of Event objects (see EventSubscription).
     */
    subscribeEvents(filters = {}) {
      const request = { ...filters };
      if (request.after_sequence !== undefined && request.after_sequence !== null) {
        request.after_sequence = String(request.after_sequence);
      }
      return new EventSubscription(events.SubscribeEvents(request, metadata(request.server_call_id)));
    },

    /**
     * DownloadContent({location, offset, length}, {serverCallId}) as an async iterator of pieces
     * `{data, offset, total_size, content_type}` (no deadline: files can be large); `serverCallId`
     * (the recording's call) routes it to the node holding the file. Failures throw a CallrecError.
     */
    async *downloadContent(request, { serverCallId = '' } = {}) {
      const call = content.DownloadContent(request, metadata(serverCallId));
      try {
        for await (const piece of call) yield piece;
      } catch (err) {
        throw toCallrecError('DownloadContent', err);
      } finally {
        // Breaking out early cancels the RPC; its CANCELLED 'error' event is expected: ignore it.
        call.on('error', () => {});
        call.cancel();
      }
    },

    /** DeleteContent({location}, {serverCallId}) -> {deleted_locations}; `serverCallId` as in downloadContent. */
    deleteContent: (request, { serverCallId = '' } = {}) => unary(content, 'DeleteContent', request, serverCallId),

    /**
     * Opens a StreamMedia stream for `serverCallId` as gateway `gatewayId`: sends `open`
     * and resolves with a GatewayStream once the server answered `opened`. The stream carries
     * the routing header (gRPC sends metadata when the stream is created, before `open`).
     */
    openGateway(serverCallId, gatewayId, { callId = '', timeoutMs: openTimeoutMs = timeoutMs } = {}) {
      const call = media.StreamMedia(metadata(serverCallId));
      const gateway = new GatewayStream(call, serverCallId, gatewayId);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          call.cancel();
          reject(new Error(`StreamMedia: no 'opened' within ${openTimeoutMs} ms`));
        }, openTimeoutMs);
        gateway.onResponse((response) => {
          if (response.message === 'opened' && gateway.opened === null) {
            gateway.opened = response.opened;
            clearTimeout(timer);
            resolve(gateway);
          }
        });
        gateway.done.then((status) => {
          if (gateway.opened === null) {
            clearTimeout(timer);
            reject(gateway.error || new CallrecError('StreamMedia', status.code, status.details || 'stream closed before opened'));
          }
        });
        gateway
          .send({ open: { server_call_id: serverCallId, call_id: callId, gateway_id: gatewayId } })
          .catch((err) => {
            clearTimeout(timer);
            reject(err);
          });
      });
    },

    /** The raw grpc-js clients, for anything not wrapped here (pass `metadata(serverCallId)`). */
    clients: { recording, media, events, content },

    /** Closes the channel. */
    close() {
      for (const client of [content, events, media, recording]) client.close();
    },
  };
}

module.exports = {
  connect, connectionOptionsFromEnv, channelCredentials, loadCallrecPackage, CallrecError, EventSubscription,
  GatewayStream, RecordingCalls, routingValue, PROTO_ROOT, LOADER_OPTIONS, ROUTING_HEADER, DEFAULT_RECORDING_CACHE_SIZE,
};
