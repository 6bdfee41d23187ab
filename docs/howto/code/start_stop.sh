ember start --name exp1
python -c 'import ember; ember.init(address="exp1"); q = ember.Queue(name="results", lifetime="runtime"); q.put("kept")'
python -c 'import ember; ember.init(address="exp1"); print(ember.Queue.attach("results").get(timeout=10))'
ember stop exp1
