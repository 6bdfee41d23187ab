ember run squares.py
