// A scripted gdbstub for the misbehaviours QEMU never shows (silence, runaway packets, NAKs,
// corrupt checksums, run-length replies, stale packets, error replies). It runs in a worker
// thread so the blocking client, which holds the main thread during a request, can talk to it.
// Plain JavaScript: a worker cannot load TypeScript under the test runner. Its packet parser is
// written independently of the client under test.
import net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';

const MEMORY_SIZE = 1 << 20;
const memory = new Uint8Array(MEMORY_SIZE);
// Every other 16 bytes are zero, so hex replies have long runs for run-length encoding.
for (let i = 0; i < MEMORY_SIZE; i++) memory[i] = (i >> 4) & 1 ? 0 : (i * 31 + (i >> 8)) & 0xff;

function checksum(text) {
  let s = 0;
  for (let i = 0; i < text.length; i++) s = (s + text.charCodeAt(i)) & 0xff;
  return s.toString(16).padStart(2, '0');
}

const frame = (payload) => `$${payload}#${checksum(payload)}`;

/** Run-length encode runs of 4+ equal characters the way the protocol allows. */
function rle(text) {
  let out = '';
  for (let i = 0; i < text.length; ) {
    let j = i;
    while (j < text.length && text[j] === text[i] && j - i < 97) j++;
    let run = j - i;
    // Counts that would encode as '#' or '$' are not allowed; shorten the run instead.
    while (run >= 4 && (run - 1 + 29 === 0x23 || run - 1 + 29 === 0x24)) run--;
    if (run >= 4) {
      out += text[i] + '*' + String.fromCharCode(run - 1 + 29);
      i += run;
    } else {
      out += text[i];
      i++;
    }
  }
  return out;
}

function unescape(bytes) {
  const out = [];
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x7d) out.push(bytes[++i] ^ 0x20);
    else out.push(bytes[i]);
  }
  return Uint8Array.from(out);
}

const TARGET_XML =
  '<?xml version="1.0"?><target><xi:include href="core.xml"/><!-- <reg name="ghost" bitsize="64"/> --></target>';
function coreXml() {
  const names = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];
  let x = '<feature name="org.gnu.gdb.i386.core">';
  names.forEach((n, i) => (x += `<reg name="${n}" bitsize="64"${i === 0 ? ' regnum="0"' : ''}/>`));
  x += '<reg name="rip" bitsize="64"/><reg name="eflags" bitsize="32"/>';
  for (const n of ['cs', 'ss', 'ds', 'es', 'fs', 'gs']) x += `<reg name="${n}" bitsize="32"/>`;
  for (const n of ['fs_base', 'gs_base', 'k_gs_base', 'cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer']) x += `<reg name="${n}" bitsize="64"/>`;
  return x + '</feature>';
}

const scenario = workerData.scenario;
const counters = new Map();
const count = (key) => {
  const n = (counters.get(key) ?? 0) + 1;
  counters.set(key, n);
  return n;
};

/** Replies (wire text) to one good packet: `payload` unescaped, `raw` as it came. The caller adds the ack. */
function answer(payload, raw) {
  const text = Buffer.from(payload).toString('latin1');
  if (text.startsWith('qSupported')) return [frame(scenario === 'small-packets' ? 'PacketSize=100' : 'PacketSize=1000;qXfer:features:read+')];
  if (text === 'qqemu.PhyMemMode') return [frame('0')];
  if (text.startsWith('Qqemu.PhyMemMode:')) return [frame('OK')];
  if (text.startsWith('qXfer:features:read:')) {
    const [annex, range] = text.slice('qXfer:features:read:'.length).split(':');
    if (scenario === 'xml-loop') return [frame(`l<target><xi:include href="${annex}x"/></target>`)];
    const doc = annex === 'target.xml' ? TARGET_XML : coreXml();
    const [off, len] = range.split(',').map((v) => parseInt(v, 16));
    const part = doc.slice(off, off + len);
    return [frame((off + len >= doc.length ? 'l' : 'm') + part)];
  }
  if (text === 'g') {
    if (scenario === 'short-g') return [frame('00'.repeat(40))];
    let g = '';
    for (let i = 0; i < 16; i++) g += (BigInt(i + 1) * 0x1111n).toString(16).padStart(16, '0').match(/../g).reverse().join('');
    g += 'f0ff000000000000' + '02000000' + '00f00000'.repeat(6) + '00'.repeat(8 * 9);
    return [frame(g)];
  }
  if (text === 'qfThreadInfo' || text === 'qsThreadInfo') return [frame(scenario === 'endless-threads' ? 'm01' : text === 'qfThreadInfo' ? 'm01,02' : 'l')];
  if (text.startsWith('X')) {
    if (scenario !== 'binary-writes') return [frame('')];
    const colon = raw.indexOf(0x3a);
    const [addr, len] = Buffer.from(raw.subarray(1, colon)).toString('latin1').split(',').map((v) => parseInt(v, 16));
    const data = unescape(raw.subarray(colon + 1));
    if (data.length !== len) return [frame('E22')];
    memory.set(data, addr);
    return [frame('OK')];
  }
  if (text.startsWith('M')) {
    const [head, hex] = text.slice(1).split(':');
    const [addr] = head.split(',').map((v) => parseInt(v, 16));
    memory.set(Buffer.from(hex, 'hex'), addr);
    return [frame('OK')];
  }
  if (text.startsWith('m')) {
    const [addr, len] = text.slice(1).split(',').map((v) => parseInt(v, 16));
    if (scenario === 'error-replies' && addr >= 0x8000) return [frame('E14')];
    if (addr + len > MEMORY_SIZE) return [frame('E14')];
    const hex = Buffer.from(memory.subarray(addr, addr + len)).toString('hex');
    if (scenario === 'run-length') return [frame(rle(hex))];
    return [frame(hex)];
  }
  if (text === 'D') return [frame('OK')];
  return [frame('')];
}

const server = net.createServer((sock) => {
  sock.setNoDelay(true);
  let buf = Buffer.alloc(0);
  let lastReply = '';
  sock.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      const start = buf.indexOf(0x24);
      if (start < 0) {
        // Acks and interrupt bytes: a '-' asks for the last reply again.
        if (buf.includes(0x2d) && lastReply) sock.write(lastReply);
        buf = Buffer.alloc(0);
        return;
      }
      if (buf.subarray(0, start).includes(0x2d) && lastReply) sock.write(lastReply);
      const hash = buf.indexOf(0x23, start);
      if (hash < 0 || buf.length < hash + 3) {
        buf = buf.subarray(start);
        return;
      }
      const raw = buf.subarray(start + 1, hash);
      const cs = buf.subarray(hash + 1, hash + 3).toString('latin1');
      buf = buf.subarray(hash + 3);
      if (checksum(raw.toString('latin1')) !== cs) {
        sock.write('-');
        continue;
      }
      const payload = unescape(raw);
      const text = Buffer.from(payload).toString('latin1');
      const isData = text.startsWith('m') || text === 'g';
      if (scenario === 'silent' && isData) continue; // no ack, no reply
      if (scenario === 'nak-always' && isData) {
        sock.write('-');
        continue;
      }
      if (scenario === 'nak-once' && isData && count(text) === 1) {
        sock.write('-');
        continue;
      }
      if (scenario === 'runaway' && isData) {
        sock.write('+$');
        const junk = Buffer.alloc(64 * 1024, 0x61);
        for (let i = 0; i < 40; i++) sock.write(junk);
        continue;
      }
      if (scenario === 'stale-packets' && isData) sock.write(frame('OK') + frame('T05thread:01;'));
      const replies = answer(payload, raw);
      let out = '+';
      for (const r of replies) out += r;
      if (scenario === 'corrupt-once' && isData && count(text) === 1) {
        // Same reply with a wrong checksum; the client must NAK it and get the good copy.
        const good = replies[0];
        const bad = good.slice(0, -2) + (good.slice(-2) === '00' ? '01' : '00');
        lastReply = good;
        sock.write('+' + bad);
        continue;
      }
      lastReply = replies[replies.length - 1] ?? '';
      sock.write(out);
    }
  });
  sock.on('error', () => {});
});

server.listen(0, '127.0.0.1', () => parentPort.postMessage({ port: server.address().port }));
parentPort.on('message', (m) => {
  if (m === 'stop') server.close(() => process.exit(0));
});
