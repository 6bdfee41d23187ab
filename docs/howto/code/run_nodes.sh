ember run --hosts local:3 one_per_node.py 3
