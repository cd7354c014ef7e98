import pytest

from assistant.models import AssistantConfig

from .model_server import ModelServer

SECRET = "sk-test-SECRET-0123456789abcdefSECRET"


@pytest.fixture
def model_server():
    server = ModelServer().start()
    yield server
    server.stop()


@pytest.fixture
def assistant(tenants, model_server):
    """Company A's assistant, pointed at the test server, with facts and a key."""
    config = AssistantConfig(
        company=tenants.a,
        base_url=model_server.url,
        model="test-large",
        business_name="Salon Alpha",
        opening_hours="Mon-Fri 9-18",
        services="Haircut 30 EUR\nColouring 60 EUR",
        address="Hauptstr. 1, Berlin",
        booking_link="https://book.example.com/alpha",
        languages="German, English",
        timeout_seconds=2.0,
        price_input_per_million=1,
        price_output_per_million=2,
    )
    config.set_api_key(SECRET)
    config.save()
    tenants.a.inbound_handler = "assistant"
    tenants.a.save()
    return config


@pytest.fixture
def turns_assistant(assistant):
    """The same assistant on the turn pipeline ("assistant_turns"), unpaced replies."""
    company = assistant.company
    company.inbound_handler = "assistant_turns"
    company.typing_seconds_per_char = 0.0
    company.save()
    return assistant
