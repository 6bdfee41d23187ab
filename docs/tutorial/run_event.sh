ember run event.py
