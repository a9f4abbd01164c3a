/** Bits of `task_struct.flags` that analyses and actions test (include/linux/sched.h). */

/** Getting shut down: set early in do_exit(). */
export const PF_EXITING = 0x0000_0004;
/** I am a workqueue worker. */
export const PF_WQ_WORKER = 0x0000_0020;
/** I am a kernel thread. */
export const PF_KTHREAD = 0x0020_0000;
