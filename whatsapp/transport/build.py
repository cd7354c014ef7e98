"""Build real neonize `MessageEv` protobufs, as whatsmeow would deliver them.

Used by the WhatsApp simulator (which speaks the same events as WhatsApp) and
by tests. Nothing here is faked: these are the library's own message types.
"""

import time

from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource
from neonize.proto.Neonize_pb2 import Message as MessageEv
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

EMPTY_JID = JID(User="", Server="", Device=0, RawAgent=0, Integrator=0, IsEmpty=True)


def jid_proto(text):
    """`user[:device]@server` -> neonize JID proto ('' -> the empty JID)."""
    if not text:
        return EMPTY_JID
    user, _, server = text.rpartition("@")
    user, _, device = user.partition(":")
    return JID(User=user, Server=server, Device=int(device or 0), RawAgent=0, Integrator=0,
               IsEmpty=False)


def message_event(message_id, chat, text=None, *, sender=None, sender_alt=None, push_name="",
                  from_me=False, is_group=None, timestamp=None, content=None, is_edit=False):
    """A MessageEv. `content` (a waE2E.Message) overrides `text` (a plain conversation)."""
    if content is None:
        content = WAMessage(conversation=text or "")
    chat_jid = jid_proto(chat)
    source = MessageSource(
        Chat=chat_jid,
        Sender=jid_proto(sender) if sender else chat_jid,
        IsFromMe=from_me,
        IsGroup=chat.endswith("@g.us") if is_group is None else is_group,
        AddressingMode="LID" if (sender or chat).endswith("@lid") else "PN",
        SenderAlt=jid_proto(sender_alt),
        RecipientAlt=EMPTY_JID,
        BroadcastListOwner=EMPTY_JID,
    )
    info = MessageInfo(
        MessageSource=source,
        ID=message_id,
        Pushname=push_name,
        Timestamp=int(timestamp if timestamp is not None else time.time()),
        Type="text" if content.HasField("conversation") else "media",
        ServerID=0,
        Category="",
        Multicast=False,
        MediaType="",
        Edit="1" if is_edit else "",
    )
    return MessageEv(
        Info=info,
        Message=content,
        IsEdit=is_edit,
        IsEphemeral=False,
        IsViewOnce=False,
        IsViewOnceV2=False,
        IsViewOnceV2Extension=False,
        IsDocumentWithCaption=False,
        IsLottieSticker=False,
        UnavailableRequestID="",
        RetryCount=0,
    )
