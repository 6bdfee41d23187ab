import os

import ember

print("hello from the head process, p_uid", os.environ["EMBER_P_UID"])
print("inside a runtime:", ember.is_initialized())
