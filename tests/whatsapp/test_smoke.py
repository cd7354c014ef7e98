from whatsapp.models import InboundMessage
from whatsapp.services.inbound import record_inbound_message
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message


def test_it_records_a_message_once(company):
    msg = normalize_message(message_event("M1", "491701234567@s.whatsapp.net", "hello"))
    assert record_inbound_message(company.pk, msg).created
    assert not record_inbound_message(company.pk, msg).created
    assert InboundMessage.objects.count() == 1
