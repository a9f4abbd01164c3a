/**
 * A blocking GDB remote-protocol client: the same protocol rules as GdbRemote (protocol.ts), on
 * a socket read synchronously, for the synchronous PhysicalMemory interface. It speaks only
 * what a memory source needs: negotiation, memory packets, physical mode, detach.
 *
 * Several requests can be in flight at once. QEMU's stub reads its input in order and answers
 * each packet before looking at the next one, and a new packet simply abandons its wait for
 * our ack of the previous reply; so replies come back in request order, and a batch of reads
 * overlaps our work, the transfers and QEMU's instead of paying a full round trip per packet.
 */
import { TargetError, UsageError } from '../../util/errors.ts';
import { BlockingSocket } from './blocking-socket.ts';
import {
  ACK,
  type Completion,
  DEFAULT_TIMEOUT_MS,
  errorCode,
  Exchange,
  FALLBACK_PACKET_SIZE,
  FrameDecoder,
  framePacket,
  handshakeSilence,
  NACK,
  packetSizeFrom,
  parseSupported,
  type StopReply,
  type WireEvent,
} from './protocol.ts';

export interface BlockingClientOptions {
  /** Time allowed for connecting and for each request (reset as replies arrive). Default 5000 ms. */
  readonly timeoutMs?: number;
}

/** One request of a batch: its payload, a label for errors, and what to do with the reply. */
export interface BatchRequest {
  readonly payload: string;
  readonly what: string;
  /** Handle the reply; an error thrown here is rethrown once the batch has drained. */
  readonly onReply: (reply: Buffer) => void;
}

/** Requests in flight at most: their replies (≤ 4 KiB each on QEMU) must fit socket buffers. */
export const MAX_PIPELINE_DEPTH = 32;

export class BlockingGdbClient {
  private readonly decoder = new FrameDecoder();
  private readonly rx = Buffer.allocUnsafe(64 * 1024);
  private broken: TargetError | undefined;
  private featureMap: ReadonlyMap<string, string> = new Map();
  private maxPacket = FALLBACK_PACKET_SIZE;
  private last: StopReply | undefined;
  private sawStopOnConnect = false;
  private requestCount = 0;
  /** A reply was left unacknowledged, to be acknowledged by the next request's prefix or on close. */
  private ackOwed = false;

  private constructor(
    private readonly socket: BlockingSocket,
    /** host:port of the stub. */
    readonly address: string,
    readonly timeoutMs: number,
  ) {}

  /** Connect to an IP literal or 'localhost' and negotiate. QEMU stops the guest on connect. */
  static connect(host: string, port: number, opts: BlockingClientOptions = {}): BlockingGdbClient {
    if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new UsageError(`bad gdbstub port: ${port}`);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const socket = BlockingSocket.connect(host, port, timeoutMs, `gdbstub at ${host}:${port}`);
    const client = new BlockingGdbClient(socket, `${host}:${port}`, timeoutMs);
    try {
      let reply: Buffer;
      try {
        reply = client.request('qSupported:xmlRegisters=i386', 'qSupported');
      } catch (e) {
        if (e instanceof TargetError && /did not answer/.test(e.message)) throw new TargetError(handshakeSilence(client.where, timeoutMs));
        throw e;
      }
      client.featureMap = parseSupported(reply.toString('latin1'));
      client.maxPacket = packetSizeFrom(client.featureMap, FALLBACK_PACKET_SIZE);
      client.sawStopOnConnect = client.last !== undefined;
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  get where(): string {
    return this.socket.where;
  }

  get features(): ReadonlyMap<string, string> {
    return this.featureMap;
  }

  get packetSize(): number {
    return this.maxPacket;
  }

  /** Most bytes one `m` may ask for: the hex reply must fit a packet (QEMU: 2048). */
  get maxReadBytes(): number {
    return Math.floor(this.maxPacket / 2);
  }

  /** Most bytes one `M` may carry: header plus two hex digits a byte within a packet. */
  get maxWriteBytes(): number {
    return Math.max(1, (this.maxPacket - 32) >> 1);
  }

  /** True when the guest was running and connecting stopped it (QEMU 7.2 announces it with `T02`). */
  get stoppedOnConnect(): boolean {
    return this.sawStopOnConnect;
  }

  get lastStop(): StopReply | undefined {
    return this.last;
  }

  /** Packets sent so far (a measure of round trips). */
  get requests(): number {
    return this.requestCount;
  }

  get closed(): boolean {
    return this.broken !== undefined;
  }

  private fail(e: TargetError): never {
    if (!this.broken) this.broken = e;
    this.socket.close();
    throw e;
  }

  /** One request, one reply (or just the ack for completion 'ack'). */
  request(payload: string, what: string, completion: Completion = 'reply'): Buffer {
    let out: Buffer | undefined;
    this.runExchanges([{ payload, what, onReply: (r) => (out = r) }], 1, completion);
    return out!;
  }

  /**
   * Run requests with up to `depth` in flight. Every reply is consumed even after an error, so the
   * connection stays in step; the first error thrown by an onReply is rethrown at the end.
   */
  batch(requests: readonly BatchRequest[], depth: number): void {
    if (requests.length === 0) return;
    this.runExchanges(requests, Math.max(1, Math.min(depth, MAX_PIPELINE_DEPTH)), 'reply');
  }

  private runExchanges(requests: readonly BatchRequest[], depth: number, completion: Completion): void {
    if (this.broken) throw this.broken;
    const onStop = (s: StopReply): void => {
      this.last = s;
    };
    const inFlight: { ex: Exchange; req: BatchRequest }[] = [];
    let nextToSend = 0;
    let firstError: unknown;
    let deadline = performance.now() + this.timeoutMs;
    // What to send next: acks for the packets just decoded, retransmissions and new requests.
    // Everything decoded from one read is answered with one write, which matters to QEMU: it
    // wakes its main loop for every segment it receives.
    const out: Buffer[] = [];

    const queueRequests = (): void => {
      while (nextToSend < requests.length && inFlight.length < depth) {
        const req = requests[nextToSend++]!;
        const ex = new Exchange(framePacket(req.payload), completion, req.what, onStop);
        inFlight.push({ ex, req });
        out.push(ex.framed);
        this.requestCount++;
      }
    };
    const flush = (): void => {
      if (out.length === 0) return;
      this.socket.sendAll(out.length === 1 ? out[0]! : Buffer.concat(out), deadline);
      out.length = 0;
    };

    this.ackOwed = false; // the first request's prefix acknowledges it
    try {
      queueRequests();
      for (;;) {
        for (let ev = this.decoder.next(); ev; ev = this.decoder.next()) {
          if (ev.kind === 'packet') out.push(ev.checksumOk ? ACK : NACK);
          const target = this.route(ev, inFlight, depth);
          if (!target) continue;
          const step = target.ex.onEvent(ev);
          if (step.kind === 'send') out.push(step.bytes);
          else if (step.kind === 'fail') this.fail(step.error);
          else if (step.kind === 'done') {
            inFlight.splice(inFlight.indexOf(target), 1);
            deadline = performance.now() + this.timeoutMs;
            try {
              target.req.onReply(step.payload);
            } catch (e) {
              if (firstError === undefined) firstError = e;
            }
            queueRequests();
          }
          // Events after the last reply stay queued for the next request (late stop replies).
          if (inFlight.length === 0) break;
        }
        if (inFlight.length === 0) {
          // The last reply's ack rides on the next request: every request starts with '+'
          // (REQUEST_PREFIX), and QEMU keeps only one reply waiting for an ack. That saves a
          // send per read, the costliest step of a round trip on loopback.
          if (out.every((b) => b === ACK)) {
            this.ackOwed = out.length > 0;
            out.length = 0;
          }
          flush();
          break;
        }
        flush();
        const n = this.socket.receive(this.rx, deadline);
        if (n < 0) {
          const head = inFlight[0]!.req.what;
          this.fail(new TargetError(`${this.where} did not answer ${head} within ${this.timeoutMs} ms; connection closed`));
        }
        this.decoder.push(this.rx, 0, n);
      }
    } catch (e) {
      // Whatever went wrong mid-exchange, the stream is no longer in step with the requests.
      if (!this.broken) this.broken = e instanceof TargetError ? e : new TargetError(`connection to ${this.where} failed: ${String(e)}`);
      this.socket.close();
      throw e;
    }
    if (firstError !== undefined) throw firstError;
  }

  /**
   * Which in-flight request an event belongs to: acks to the oldest unacknowledged one, packets to
   * the oldest unanswered one. With several in flight a `-` or a corrupt packet cannot be matched
   * to a retransmission reliably, so they end the connection instead of being retried.
   */
  private route(ev: WireEvent, inFlight: { ex: Exchange }[], depth: number): { ex: Exchange; req: BatchRequest } | undefined {
    const multi = depth > 1 && inFlight.length > 1;
    if (ev.kind === 'packet') {
      if (!ev.checksumOk && multi) this.fail(new TargetError(`${this.where} sent a corrupt packet during a batch`));
      return inFlight[0] as { ex: Exchange; req: BatchRequest };
    }
    if (ev.kind === 'nack' && multi) this.fail(new TargetError(`${this.where} rejected a packet during a batch`));
    const target = inFlight.find((f) => !f.ex.acked);
    return target as { ex: Exchange; req: BatchRequest } | undefined;
  }

  /** `OK` or a TargetError saying what was refused. */
  requestOk(payload: string, what: string): void {
    const r = this.request(payload, what).toString('latin1');
    if (r === 'OK') return;
    if (r === '') throw new TargetError(`gdbstub does not support ${what}`);
    const code = errorCode(Buffer.from(r, 'latin1'));
    throw new TargetError(`gdbstub refused ${what}${code !== undefined ? ` (error 0x${code.toString(16)})` : `: ${r.slice(0, 40)}`}`);
  }

  /** Whether QEMU's `m`/`M` use guest-physical addresses (the mode is QEMU-wide). */
  physicalMode(): boolean {
    const r = this.request('qqemu.PhyMemMode', 'qqemu.PhyMemMode').toString('latin1');
    if (r !== '0' && r !== '1') {
      throw new TargetError('gdbstub has no physical memory mode (qqemu.PhyMemMode): not a QEMU system-mode stub?');
    }
    return r === '1';
  }

  setPhysicalMode(on: boolean): void {
    this.requestOk(`Qqemu.PhyMemMode:${on ? 1 : 0}`, 'physical memory mode (Qqemu.PhyMemMode)');
  }

  /** Detach (`D`): QEMU removes breakpoints and resumes the guest. The connection then closes. */
  detach(): void {
    try {
      this.requestOk('D', 'detach');
    } finally {
      this.close();
    }
  }

  close(): void {
    if (!this.broken) {
      this.broken = new TargetError(`connection to ${this.where} is closed`);
      if (this.ackOwed) {
        try {
          this.socket.sendAll(ACK, performance.now() + this.timeoutMs);
        } catch {
          // Closing anyway.
        }
      }
    }
    this.socket.close();
  }
}
