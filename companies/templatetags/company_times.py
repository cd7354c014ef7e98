"""`{{ value|company_time:company }}`: a time in the company's zone, named
(companies/admin_times.py)."""

from django import template

from companies.admin_times import company_time as _company_time
from companies.admin_times import time_html

register = template.Library()


@register.filter
def company_time(value, company=None):
    return _company_time(value, company) or "-"


@register.filter
def company_time_html(value, company=None):
    return time_html(value, company)
