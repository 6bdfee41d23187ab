"""The smallest ember program: used to time `ember run` start-up and teardown."""
