#!/bin/bash
taskset -c 1 perf record -a -e syscalls:sys_enter_sendfile64,syscalls:sys_exit_sendfile64,sched:sched_wakeup,sched:sched_switch,syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,syscalls:sys_enter_recvfrom,ipi:ipi_send_cpu -o $D/tr.data -- sleep ${WIN:-0.5} 2>$D/tr.err
