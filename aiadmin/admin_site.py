"""The admin site of aiadmin: its name, no "View site" (there is no public site),
and the connection-health dashboard listed first under WhatsApp."""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.urls import reverse


class AiadminSite(admin.AdminSite):
    site_header = "aiadmin"
    site_title = "aiadmin"
    index_title = "WhatsApp connections of your companies"
    site_url = None  # no "View site" link: the admin is the site

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        for app in apps:
            if app["app_label"] == "whatsapp":
                app["models"].insert(0, self.health_entry())
        return apps

    def health_entry(self):
        return {
            "name": "Connection health",
            "object_name": "ConnectionHealth",
            "perms": {"add": False, "change": False, "delete": False, "view": True},
            "admin_url": reverse("whatsapp_health"),
            "add_url": None,
            "view_only": True,
        }


class AiadminAdminConfig(AdminConfig):
    default_site = "aiadmin.admin_site.AiadminSite"
