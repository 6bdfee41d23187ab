ember run process.py
