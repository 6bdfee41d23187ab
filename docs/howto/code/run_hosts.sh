ember run --hosts n1,n2,n3 one_per_node.py 3
ember run --hosts @hosts.txt --ssh-config ~/.ssh/cluster.conf one_per_node.py 3
