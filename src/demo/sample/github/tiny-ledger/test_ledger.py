from ledger import Ledger


def test_a_replay_gives_the_same_balances():
    ledger = Ledger()
    ledger.append("opened", "nora", 0)
    ledger.append("deposited", "nora", 120)
    ledger.append("withdrew", "nora", 20)
    before = dict(ledger.balances)
    ledger.replay()
    assert ledger.balances == before == {"nora": 100}


def test_applying_an_event_twice_changes_nothing():
    ledger = Ledger()
    event = ledger.append("deposited", "nora", 50)
    ledger.apply(event)
    assert ledger.balance("nora") == 50
