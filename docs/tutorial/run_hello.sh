ember run hello.py
