"""The HTTP gateway: `codeexec gateway` serves the API over Executions and Runtimes as each caller."""
