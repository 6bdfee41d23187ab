ember ls
ember ps
ember stacks consumer
ember channels
ember events
