"""Three tenants for every test that touches ownership."""

from dataclasses import dataclass

from django.contrib.auth import get_user_model

from companies.models import Company, Membership


@dataclass
class Tenants:
    a: Company
    b: Company
    owner: object  # owner of company A
    member: object  # plain member of company A
    other_owner: object  # owner of company B
    outsider: object  # belongs to no company
    superuser: object

    @classmethod
    def create(cls):
        User = get_user_model()
        a = Company.objects.create(name="Salon Alpha", slug="alpha", timezone="Europe/Berlin")
        b = Company.objects.create(name="Barber Beta", slug="beta")
        owner = User.objects.create_user("owner", password="pw-owner-123!", is_staff=True)
        member = User.objects.create_user("member", password="pw-member-123!", is_staff=True)
        other = User.objects.create_user("other", password="pw-other-123!", is_staff=True)
        outsider = User.objects.create_user("outsider", password="pw-outsider-123!",
                                            is_staff=True)
        superuser = User.objects.create_superuser("root", password="pw-root-123!")
        Membership.objects.create(company=a, user=owner, role=Membership.Role.OWNER)
        Membership.objects.create(company=a, user=member, role=Membership.Role.MEMBER)
        Membership.objects.create(company=b, user=other, role=Membership.Role.OWNER)
        return cls(a=a, b=b, owner=owner, member=member, other_owner=other, outsider=outsider,
                   superuser=superuser)
