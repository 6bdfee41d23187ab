ember run hang.py &        # a program that runs until it is stopped
sleep 5
kill -9 $!                 # its launcher killed by SIGKILL: the segments stay
ember cleanup --dry-run
ember cleanup
