python mp_program.py
ember run mp_program.py
