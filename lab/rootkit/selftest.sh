#!/bin/sh
# /init of a throwaway guest (busybox, /vmlens_rootkit.ko beside this script) that checks
# vmlens_rootkit against a real kernel from the guest's own point of view. It prints
# "@rk <step> key=value ..." lines on the console and powers the guest off; the host reads
# them (tests/lab/rootkit-build.test.ts).
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
KO=/vmlens_rootkit.ko
say() { echo "@rk $*"; }
# How many lines of ps show this pid (ps lists /proc, as any process viewer does).
in_ps() { ps | awk -v p="$1" '$1 == p' | wc -l; }
in_modules() { grep -c '^vmlens_rootkit ' /proc/modules; }
flag() { if "$@" >/dev/null 2>&1; then echo 1; else echo 0; fi; }

say start kernel=$(uname -r)

# Bad parameters are refused and change nothing.
for args in hook_syscall=99999 hook_syscall=-2 hide_pid=-3 hide_pid=2 hide_pid=77777; do
  insmod $KO $args 2>/dev/null
  say bad args=$args rc=$? modules=$(in_modules)
done

# A stopped process cannot run the hiding work: the load times out and withdraws it.
sleep 1000 &
S=$!
kill -STOP $S
insmod $KO hide_pid=$S hide_module=0 2>/dev/null
say stopped rc=$? ps=$(in_ps $S) modules=$(in_modules)
kill -CONT $S
kill $S
wait $S

# Reversible: with hide_module=0 the module stays listed and rmmod shows the process again.
sleep 1000 &
R=$!
insmod $KO hide_pid=$R hide_module=0
rc=$?
say reversible insmod=$rc ps=$(in_ps $R) modules=$(in_modules)
rmmod vmlens_rootkit
rc=$?
say reversible rmmod=$rc ps=$(in_ps $R) modules=$(in_modules) alive=$(flag kill -0 $R)
kill $R
wait $R

# The real thing: process and module hidden, both still there.
sleep 1000 &
P=$!
say target pid=$P ps=$(in_ps $P)
insmod $KO hide_pid=$P
rc=$?
say hidden insmod=$rc ps=$(in_ps $P) modules=$(in_modules) kallsyms=$(grep -c '\[vmlens_rootkit\]' /proc/kallsyms) sysfs=$(flag test -d /sys/module/vmlens_rootkit) status=$(flag grep -q '^Name:' /proc/$P/status) alive=$(flag kill -0 $P)
echo "--- ps"
ps
echo "--- /proc/modules"
cat /proc/modules
echo "--- kernel log"
dmesg | grep 'vmlens_rootkit: loaded:'

# The kernel keeps working around the unlinked entries: forks, and the hidden task's own exit.
i=0
while [ $i -lt 50 ]; do /bin/true & C=$!; wait $C; i=$((i + 1)); done
say churn forks=$i ps-lines=$(ps | wc -l)
kill $P
wait $P
say exit wait=$? ps-lines=$(ps | wc -l) status=$(flag test -e /proc/$P/status)
say end
poweroff -f
