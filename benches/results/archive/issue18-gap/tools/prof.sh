#!/bin/bash
taskset -c 1 perf stat -t $TIDS -e task-clock -e syscalls:sys_enter_sendfile64 -e sched:sched_waking --filter 'comm ~ "fanout-client*"' -e sched:sched_wakeup,ipi:ipi_send_cpu,syscalls:sys_enter_membarrier,syscalls:sys_enter_io_uring_enter -o $D/stat.txt -- sleep ${WIN:-4} &
taskset -c 1 perf record -t $TIDS -e sched:sched_wakeup,ipi:ipi_send_cpu -o $D/wake.data -- sleep ${WIN:-4} 2>$D/wrecord.err &
taskset -c 1 perf record -t $TIDS -F ${FREQ:-4000} -e cpu-clock -g -o $D/perf.data -- sleep ${WIN:-4} 2>$D/record.err
wait
