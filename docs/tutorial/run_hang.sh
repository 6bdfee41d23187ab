ember run hang.py
