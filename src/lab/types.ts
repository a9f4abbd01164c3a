import type { LabUser } from './initramfs.ts';
import type { Progress } from './progress.ts';

export type Paging = 4 | 5;
export type Accel = 'tcg' | 'kvm';

/** A long-lived process the lab started in the guest, as the guest's init reported it. */
export interface LabProcess {
  /** Its name (/proc/PID/comm). */
  readonly comm: string;
  readonly pid: number;
  readonly user: string;
  readonly uid: number;
  /** Names of its threads other than the main one (only lab-threads has any). */
  readonly threads?: readonly string[];
}

/** Everything known about a lab guest; stored as lab.json in its runtime directory. */
export interface LabInfo {
  readonly name: string;
  /** Exact Debian image package, its version, and the kernel release (`uname -r`). */
  readonly kernelPackage: string;
  readonly kernelVersion: string;
  readonly kernelRelease: string;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly paging: Paging;
  readonly accel: Accel;
  /** Guest RAM, shared with QEMU (memory-backend-file, share=on). */
  readonly ramFile: string;
  /** QMP monitor for vmlens (and anyone else). */
  readonly qmpSocket: string;
  /** Serial console (ttyS0): kernel messages and a root shell; see GuestConsole. */
  readonly consoleSocket: string;
  /**
   * The host's command shell: a root shell on a virtio console (hvc0), with its output port
   * (fd 3 in that shell). GuestConsole.forLab() uses both; much faster than the serial console.
   */
  readonly shellSocket: string;
  readonly dataSocket: string;
  /** gdbstub on 127.0.0.1. */
  readonly gdbPort: number;
  /** QEMU's pid. */
  readonly pid: number;
  /** Modules the guest loaded, in load order, as /proc/modules names them. */
  readonly modules: readonly string[];
  readonly processes: readonly LabProcess[];
  readonly users: readonly LabUser[];
  /** Hostname set in the guest. */
  readonly hostname: string;
  readonly startedAt: string;
  /** From starting QEMU to the guest's ready marker. */
  readonly bootMs: number;
  readonly runtimeDir: string;
  readonly kernelCmdline: string;
  readonly vmlinuz: string;
  readonly initramfs: string;
  /** A second QMP monitor the lab keeps for itself (status, shutdown). */
  readonly labQmpSocket: string;
  /** A process whose exit makes this guest disposable (set by the test harness). */
  readonly ownerPid?: number;
  /** What vmlens_rootkit changed, when the guest was started with it (`lab up --rootkit`). */
  readonly rootkit?: LabRootkit;
}

/**
 * Ground truth of a rootkit guest, from the module's own log line (addresses as 0x… strings:
 * lab.json is JSON). The hidden process is in neither `processes` nor the guest's ps; the
 * module is in neither `modules` nor /proc/modules.
 */
export interface LabRootkit {
  readonly module: string;
  readonly structModule: string;
  readonly hiddenProcess: { readonly pid: number; readonly comm: string; readonly task: string };
  readonly hook: {
    readonly syscall: number;
    readonly sysCallTable: string;
    /** The kernel's handler the entry held, and its symbol. */
    readonly original: string;
    readonly originalSymbol: string;
    /** The module's function the entry now holds. */
    readonly handler: string;
  };
  /** How this kernel dispatches system calls (see RootkitLoadRecord). */
  readonly dispatch: 'x64_sys_call' | 'sys_call_table';
}

export interface LabUpOptions {
  /** Guest name, [a-z0-9_-]; default 'default'. */
  readonly name?: string;
  /** Kernel image package or meta-package; default linux-image-amd64. */
  readonly kernel?: string;
  /** Guest RAM in MiB; default 1024. */
  readonly memoryMiB?: number;
  readonly cpus?: number;
  /** 5 (default) for 5-level paging (LA57), 4 for 4-level. */
  readonly paging?: Paging;
  /** Long-lived lab-worker-N processes; default 16. */
  readonly processes?: number;
  readonly accel?: Accel;
  readonly bootTimeoutMs?: number;
  /** Phase lines; default: on stderr when it is a terminal. */
  readonly progress?: Progress;
  readonly ownerPid?: number;
  /** Build vmlens_rootkit for the guest's kernel and load it after boot (see LabInfo.rootkit). */
  readonly rootkit?: boolean;
}
