import ember


def square(x):
    return x * x


def fail(x):
    raise ValueError(f"bad input {x}")


if __name__ == "__main__":
    p = ember.Process(target=square, args=(7,), name="squarer")
    p.start()
    print("result:", p.result())        # waits for the return value
    p.join()
    print("exit code:", p.exitcode)

    p = ember.Process(target=fail, args=(3,))
    p.start()
    try:
        p.result()
    except ValueError as exc:           # the child's exception, as itself
        print("the child raised:", repr(exc))
    p.join()
    print("exit code:", p.exitcode)
