/**
 * Cold attach, measured inside a fresh process: from nothing to the first process row.
 *
 *   node --import tsx bench/support/cold-attach.ts QMP_SOCKET SOURCE
 *
 * Prints one JSON line: milliseconds from this process's start to the moment the script runs
 * (Node and TypeScript loading), then attach (QMP, the memory source, vCPU state), opening the
 * kernel (finding it, kallsyms, BTF), the first task row, and the whole process list.
 */
import { TaskScanner, listTasks } from '../../src/analyses/ps.ts';
import { openKernel } from '../../src/kernel/open.ts';
import { attachQemu, type LiveSourceKind } from '../../src/machine/qemu.ts';

const loadedMs = performance.now();
const [qmp, source] = process.argv.slice(2);
if (!qmp || !source) {
  process.stderr.write('usage: cold-attach.ts QMP_SOCKET file|proc|gdb\n');
  process.exit(2);
}
const t0 = performance.now();
const machine = await attachQemu(qmp, { source: source as LiveSourceKind });
const attachedMs = performance.now();
let firstRowMs = 0;
let kernelMs = 0;
let listMs = 0;
let tasks = 0;
try {
  const k = await openKernel(machine);
  kernelMs = performance.now();
  const scanner = new TaskScanner(k);
  let first = true;
  // The first row: the scan's first task with the columns ps prints.
  scanner.scan((t) => {
    if (!first) return;
    first = false;
    void t.comm();
    void t.ppid();
    void t.uid();
    firstRowMs = performance.now();
  });
  const rows = listTasks(k);
  tasks = rows.length;
  listMs = performance.now();
} finally {
  await machine.close();
}
process.stdout.write(
  `${JSON.stringify({
    loadMs: loadedMs,
    attachMs: attachedMs - t0,
    kernelMs: kernelMs - attachedMs,
    attachToFirstRowMs: firstRowMs - t0,
    attachToListMs: listMs - t0,
    tasks,
  })}\n`,
);
