import pytest

from vmctl.core import validation
from vmctl.core.errors import ExitStatus, InvalidInput

pytestmark = pytest.mark.unit

BAD_NAMES = [
    "a;reboot",
    "$(id)",
    "../x",
    "-rf",
    "",
    "x" * 64,
    "wéb",
    "Web-1",
    "web_1",
    "web-",
    "1web",
    "a b",
    "web\n1",
]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validation.name(bad)
    assert err.value.field == "name"
    assert str(err.value).startswith("name: ")
    assert err.value.exit_status == ExitStatus.USAGE


@pytest.mark.parametrize("good", ["a", "web-1", "x" * 63, "db-primary-01"])
def test_good_names_pass(good: str) -> None:
    assert validation.name(good) == good


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("ram", 0),
        ("ram", -1),
        ("ram", "abc"),
        ("ram", 10**9),
        ("ram", "1.5"),
        ("ram", True),
        ("ram", 1.5),
        ("cpu", 0),
        ("cpu", 1000),
        ("cpu", "two"),
        ("disk", 0),
        ("disk", -5),
        ("disk", "abc"),
        ("disk", 10**6),
        ("count", 0),
        ("count", 101),
    ],
)
def test_bad_numbers_are_refused_naming_the_field(field: str, bad: object) -> None:
    with pytest.raises(InvalidInput) as err:
        validation.integer(field, bad)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("ram", "1024", 1024),
        ("ram", 512, 512),
        ("cpu", "2", 2),
        ("disk", " 10 ", 10),
    ],
)
def test_numbers_as_strings_are_accepted(field: str, value: object, expected: int) -> None:
    assert validation.integer(field, value) == expected


@pytest.mark.parametrize("text", ["1" * 19, "1" * 5000, "١٠٢٤", "1_024"])
def test_integer_refuses_huge_or_non_ascii_digit_strings(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validation.integer("ram", text)
    assert caught.value.field == "ram" and len(str(caught.value)) < 200


def test_public_keys() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1 me@host"
    assert validation.public_keys([f"  {key}\n"]) == [key]
    for bad in (["not a key"], [""], ["ssh-ed25519"], [f"{key}\n{key}"]):
        with pytest.raises(InvalidInput) as caught:
            validation.public_keys(bad)
        assert caught.value.field == "ssh-key" and "not an OpenSSH public key" in str(caught.value)
    with pytest.raises(InvalidInput, match="no public key"):
        validation.public_keys([])
