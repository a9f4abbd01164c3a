/**
 * The guest's own per-process view, read through its console: the ground truth the forensic
 * analyses are compared with. One shell loop per kind of file, over every /proc/PID; each
 * process's section starts with a "@@ PID" line (a process that exits mid-loop gives an empty
 * or partial section, which the comparisons skip by reading everything twice).
 */
import type { GuestConsole } from '../../src/lab/index.ts';

/**
 * Output of `command` (which names the process's directory as $d) for every process, or for
 * the given ones only: pid → text.
 */
export async function perProcess(con: GuestConsole, command: string, pids?: readonly number[]): Promise<Map<number, string>> {
  const dirs = pids ? pids.map((p) => `/proc/${p}`).join(' ') : '/proc/[0-9]*';
  const out = await con.run(`for d in ${dirs}; do p=\${d#/proc/}; echo "@@ $p"; ${command}; done`, 180_000);
  const map = new Map<number, string>();
  let pid = -1;
  let lines: string[] = [];
  const flush = () => {
    if (pid >= 0) map.set(pid, lines.join('\n'));
  };
  for (const line of out.split('\n')) {
    const m = /^@@ (\d+)$/.exec(line);
    if (m) {
      flush();
      pid = Number(m[1]);
      lines = [];
    } else if (pid >= 0) {
      lines.push(line);
    }
  }
  flush();
  // Every section ends with the newline before the next marker: drop the empty last line.
  for (const [p, text] of map) map.set(p, text.replace(/\n$/, ''));
  return map;
}

/** Sections equal in two reads taken around vmlens's own: the processes that held still. */
export function stable(before: Map<number, string>, after: Map<number, string>): Map<number, string> {
  const out = new Map<number, string>();
  for (const [pid, text] of before) if (after.get(pid) === text) out.set(pid, text);
  return out;
}

/** `od -An -tx1 -v` output back to bytes. */
export function odBytes(text: string): Uint8Array {
  const hex = text.split(/\s+/).filter((t) => /^[0-9a-f]{2}$/.test(t));
  return Uint8Array.from(hex.map((h) => parseInt(h, 16)));
}

/** `ls -l` of /proc/PID/fd: fd → link target. */
export function fdLinks(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const line of text.split('\n')) {
    const m = / (\d+) -> (.*)$/.exec(line);
    if (m) out.set(Number(m[1]), m[2]!);
  }
  return out;
}

/** A fixture script's shell helpers: start long-lived processes in their own sessions, remember them. */
export const FIXTURE_DIR = '/tmp/vmlens-fx';

/**
 * Fixtures every forensic comparison needs, started once in the shared lab guest:
 * - a deleted file still open (fd 5 of a shell) and a pipe (the shell's `sleep | cat`);
 * - TCP: a listener with an established connection from 127.0.0.1 (an IPv4 client of a
 *   dual-stack listener), a second bare listener, a TIME_WAIT remnant (wget of the lab's httpd);
 * - UDP: udhcpd bound to port 67; UNIX: syslogd's /dev/log and klogd's connected socket;
 * - a container-like process: new mount, uts, ipc, net and pid namespaces, its own tmpfs
 *   mounts (one read-only and noexec, one bind mount), slave propagation from a shared /run;
 * - a process in a new user namespace;
 * - a process with no_new_privs, inheritable and ambient capabilities (setpriv);
 * - cgroup v2 mounted, and the first fixture moved into /vmlens-fx/inner;
 * - two cgroup v1 hierarchies: a named one (the second fixture in its /box) and the pids controller.
 */
export const FIXTURE_SCRIPT = `
D=${FIXTURE_DIR}; mkdir -p $D; : > $D/pids; : > $D/daemons
start() { setsid sh -c "$1" </dev/null >/dev/null 2>&1 & echo $! >> $D/pids; }
start 'exec 5>${FIXTURE_DIR}/deleted.txt; echo gone >&5; rm ${FIXTURE_DIR}/deleted.txt; sleep 100000 | cat'
start 'sleep 100000 | nc -l -p 7101'
start 'sleep 100000 | nc -l -p 7102'
usleep 300000
start 'sleep 100000 | nc 127.0.0.1 7101'
pidof syslogd >/dev/null || { syslogd; echo syslogd >> $D/daemons; }
pidof klogd >/dev/null || { klogd; echo klogd >> $D/daemons; }
if ! pidof udhcpd >/dev/null; then printf 'interface lab0\\nstart 10.77.0.10\\nend 10.77.0.20\\nlease_file ${FIXTURE_DIR}/leases\\n' > $D/udhcpd.conf; touch $D/leases; udhcpd $D/udhcpd.conf; echo udhcpd >> $D/daemons; fi
mount --make-shared /run
start 'exec unshare -m -u -i -n -p -f --propagation slave sh -c "mount -t tmpfs -o size=1m,nosuid,nodev vmlens-fx /mnt; mkdir -p /mnt/sub /mnt/ro; mount --bind /mnt/sub /srv; mount -t tmpfs -o ro,noexec vmlens-ro /mnt/ro; hostname vmlens-fx; exec sleep 100000"'
start 'exec unshare -U -r sleep 100000'
start 'exec setpriv --nnp --inh-caps +net_bind_service,+net_raw --ambient-caps +net_bind_service sleep 100000'
mkdir -p $D/cg-named $D/cg-pids
mount -t cgroup -o none,name=vmlens cgroup $D/cg-named; mkdir -p $D/cg-named/box
echo $(sed -n 2p $D/pids) > $D/cg-named/box/cgroup.procs
mount -t cgroup -o pids cgroup $D/cg-pids
mkdir -p /sys/fs/cgroup; mount -t cgroup2 cgroup2 /sys/fs/cgroup; mkdir -p /sys/fs/cgroup/vmlens-fx/inner
echo $(head -n1 $D/pids) > /sys/fs/cgroup/vmlens-fx/inner/cgroup.procs
wget -q -O /dev/null http://127.0.0.1:8080/
usleep 500000
`;

/** Undo the fixtures: end their sessions, stop daemons started for them, unmount. */
export const FIXTURE_CLEANUP = `
D=${FIXTURE_DIR}
for p in $(cat $D/pids 2>/dev/null); do kill -TERM -$p 2>/dev/null; kill -TERM $p 2>/dev/null; done
for d in $(cat $D/daemons 2>/dev/null); do killall $d 2>/dev/null; done
usleep 300000
# The init of a pid namespace ignores SIGTERM from outside: the sessions end with SIGKILL.
for p in $(cat $D/pids 2>/dev/null); do kill -KILL -$p 2>/dev/null; done
usleep 100000
for p in $(cat /sys/fs/cgroup/vmlens-fx/inner/cgroup.procs 2>/dev/null); do echo $p > /sys/fs/cgroup/cgroup.procs; done
rmdir /sys/fs/cgroup/vmlens-fx/inner /sys/fs/cgroup/vmlens-fx 2>/dev/null
umount /sys/fs/cgroup 2>/dev/null
# A v1 hierarchy outlives its unmount while it has child cgroups: empty them first.
for p in $(cat $D/cg-named/box/cgroup.procs 2>/dev/null); do echo $p > $D/cg-named/cgroup.procs; done
rmdir $D/cg-named/box 2>/dev/null
umount $D/cg-named $D/cg-pids 2>/dev/null
mount --make-private /run
rm -rf $D
true
`;
