ember ps
ember stacks consumer
