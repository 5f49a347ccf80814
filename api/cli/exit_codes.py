"""What `vitq` exits with: scripts branch on these (a followed job's final state among them)."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_PRUNED = 4  # its sweep's pruner stopped it early (it kept its checkpoints)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool its reader stopped
EXIT_BY_STATUS = {
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
    "pruned": EXIT_PRUNED,
}
