"""The staff browsers' WebSocket: hints that a company's session changed.

Thin: on connect it checks the user (authenticated, active staff) and joins
the groups of the companies they may see (services.live); every hint is
checked once more against the user's companies before it is passed on, so a
membership removed after connecting stops the hints at once.
"""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from companies.models import Company
from whatsapp.services import live

REJECTED = 4403


class AdminLiveConsumer(AsyncJsonWebsocketConsumer):
    joined = ()

    async def connect(self):
        user = self.scope.get("user")
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            await self.close(code=REJECTED)
            return
        self.joined = await database_sync_to_async(live.groups_for_user)(user)
        if not self.joined:
            await self.close(code=REJECTED)
            return
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """Browsers only listen; anything they send is ignored, unparsed (a frame
        that is not JSON used to crash the consumer: close 1011 and a traceback)."""

    async def session_changed(self, event):
        company_id = event.get("company_id")
        if not await database_sync_to_async(self._may_see)(company_id):
            return
        await self.send_json(
            {"event": live.EVENT_TYPE, "company_id": company_id, "state": event.get("state", "")}
        )

    async def chat_changed(self, event):
        company_id = event.get("company_id")
        if not await database_sync_to_async(self._may_see)(company_id):
            return
        await self.send_json({"event": live.CHAT_EVENT_TYPE, "company_id": company_id})

    def _may_see(self, company_id):
        user = self.scope["user"]
        return Company.objects.visible_to(user).filter(pk=company_id).exists()
