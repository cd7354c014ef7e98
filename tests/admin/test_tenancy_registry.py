"""Admin tenancy, for every registered model admin, discovered from the admin
site itself: a new model that belongs to a company (directly, through its
session, or further) and is registered without scoping fails here.

The attacker is the owner of company A holding EVERY model permission; the
target is company B, whose objects the services create. Every attempt on B's
objects -- list, search, filter, change (GET and POST), add pointing at B,
moving A's row to B, delete, history, bulk actions, autocomplete -- is refused
(403, 404, "does not exist", B's object absent or a form error) and changes
nothing in the database."""

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.forms import ModelChoiceField
from django.forms.models import model_to_dict
from django.urls import reverse

from companies.admin_tenancy import TenantScopedAdmin, TenantScopedInline
from companies.models import Company, Membership

from .conftest import login
from .tenancy_world import build_company_world, objects_of, path_to_company, refused, snapshot

User = get_user_model()
REGISTRY = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)
OWNED = [(model, model_admin) for model, model_admin in REGISTRY if path_to_company(model)]

# Registered models that belong to no company, and why each may stay global.
GLOBAL_MODELS = {
    "auth.User": "an account may belong to several companies; non-superusers see the users "
    "of their companies read-only and change no one (tests below)",
    "auth.Group": "permission bundles apply across companies: superusers only",
    "whatsapp.WorkerProcess": "workers serve every company: superusers only",
    "django_q.Schedule": "a schedule runs any function with any arguments: superusers only",
    "django_q.Success": "task results of every company: superusers only",
    "django_q.Failure": "task failures of every company: superusers only",
    "django_q.OrmQ": "queued tasks of every company: superusers only",
    "axes.AccessAttempt": "login lockouts of every user: superusers lift them",
    "axes.AccessLog": "logins of every user: superusers only",
    "axes.AccessFailureLog": "failed logins of every user: superusers only",
}

# A company's credentials: not even listed to its plain members.
MANAGERS_ONLY = {"companies.CompanyAPIKey"}


def label(model):
    return model._meta.label


def url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def world(tenants):
    build_company_world(tenants.b, "worker-b")
    build_company_world(tenants.a, "worker-a")
    everything = Permission.objects.all()
    for user in (tenants.owner, tenants.member, tenants.other_owner, tenants.outsider):
        user.user_permissions.set(everything)
    return tenants


@pytest.fixture
def attacker(client, world):
    """A's owner, logged in, holding every model permission."""
    return login(client, world.owner)


def watched_models():
    return [model for model, _ in OWNED] + [User]


def is_company_field(field):
    if not isinstance(field, ModelChoiceField):
        return False
    return path_to_company(field.queryset.model) is not None


def foreign_pk(form_field, company):
    return objects_of(form_field.queryset.model, company).values_list("pk", flat=True).first()


def values_of(obj, fields=None):
    return {k: v for k, v in model_to_dict(obj, fields=fields).items() if v is not None}


def post_data(response, values):
    """Form data for the admin form in `response`: `values`, plus empty inline
    formsets (their management forms)."""
    data = {key: value for key, value in values.items() if value is not None}
    for inline in response.context.get("inline_admin_formsets", []):
        prefix = inline.formset.prefix
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    return data


def test_every_registered_admin_derives_from_the_scoped_base():
    for model, model_admin in REGISTRY:
        assert isinstance(model_admin, TenantScopedAdmin), (
            f"{label(model)} is registered with {type(model_admin).__name__}, which does not "
            "derive from companies.admin_tenancy.TenantScopedAdmin"
        )
        for inline in model_admin.inlines:
            assert issubclass(inline, TenantScopedInline), (
                f"{label(model)}: inline {inline.__name__} does not derive from TenantScopedInline"
            )
        if path_to_company(model) is None:
            assert label(model) in GLOBAL_MODELS, (
                f"{label(model)} belongs to no company: add it to GLOBAL_MODELS with a reason"
            )
        else:
            assert model_admin.company_field, f"{label(model)} belongs to a company"


def test_the_discovery_finds_the_company_owned_models():
    """The walk over model relations is what the other tests rely on."""
    found = {label(model) for model, _ in OWNED}
    assert {
        "companies.Company",
        "companies.Membership",
        "companies.CompanyAPIKey",
        "whatsapp.WhatsAppSession",
        "whatsapp.SessionLease",  # through its session
        "whatsapp.ConnectionEvent",
        "whatsapp.ProcessingJob",  # through its message
        "whatsapp.WebhookDelivery",
    } <= found


@pytest.mark.parametrize("model", [m for m, _ in OWNED], ids=label)
def test_a_foreign_companys_objects_are_out_of_reach(attacker, world, model):
    b_objects = list(objects_of(model, world.b))
    assert b_objects, f"the test world has no {label(model)} of company B: create one"
    foreign = b_objects[0]
    before = snapshot(watched_models())

    # List, search and filter: B's objects never appear.
    path = path_to_company(model)
    for query in ["", "?q=beta", "?q=Barber", f"?{path}={world.b.pk}", "?all="]:
        response = attacker.get(url(model, "changelist") + query, follow=True)
        # 400: a lookup the list does not offer (Django refuses it).
        assert response.status_code in (200, 400, 403), (query, response.status_code)
        if response.status_code == 200 and "cl" in response.context:
            shown = {obj.pk for obj in response.context["cl"].result_list}
            assert not shown & {obj.pk for obj in b_objects}, (label(model), query)
            # Nor in a filter's choices, or anywhere else on the page.
            assert world.b.name not in response.content.decode(), (label(model), query)

    # Change (GET and POST), history, delete (GET and POST) of B's object.
    assert refused(attacker.get(url(model, "change", foreign.pk)))
    assert refused(attacker.post(url(model, "change", foreign.pk), values_of(foreign)))
    assert refused(attacker.get(url(model, "history", foreign.pk)))
    assert refused(attacker.get(url(model, "delete", foreign.pk)))
    assert refused(attacker.post(url(model, "delete", foreign.pk), {"post": "yes"}))

    # Every bulk action on B's object (the changelist offers them to A's owner).
    listing = attacker.get(url(model, "changelist"))
    if listing.status_code == 200 and listing.context.get("action_form"):
        for name, _ in listing.context["action_form"].fields["action"].choices:
            if name:
                for form in [{"index": 0}, {}]:  # the action bar, or the list's own form
                    attacker.post(
                        url(model, "changelist"),
                        {"action": name, "_selected_action": [foreign.pk], "post": "yes", **form},
                    )

    # Add, with B in every field that points at a company's object.
    add = attacker.get(url(model, "add"))
    if add.status_code != 403:
        assert add.status_code == 200
        form = add.context["adminform"].form
        pointing = [name for name, field in form.fields.items() if is_company_field(field)]
        assert pointing, f"{label(model)}: an add form without a company can only be a 403"
        values = values_of(foreign, list(form.fields))
        values.update({name: foreign_pk(form.fields[name], world.b) for name in pointing})
        answer = attacker.post(url(model, "add"), post_data(add, values))
        assert answer.status_code == 200, (label(model), answer.status_code)
        errors = answer.context["adminform"].form.errors
        assert all(name in errors for name in pointing), (label(model), errors)

    # Moving A's own object to company B.
    own = objects_of(model, world.a).first()
    change = attacker.get(url(model, "change", own.pk))
    if change.status_code == 200 and "adminform" in change.context:
        form = change.context["adminform"].form
        pointing = [name for name, field in form.fields.items() if is_company_field(field)]
        if pointing:
            values = values_of(own, list(form.fields))
            values.update({name: foreign_pk(form.fields[name], world.b) for name in pointing})
            answer = attacker.post(url(model, "change", own.pk), post_data(change, values))
            assert answer.status_code in (200, 403), (label(model), answer.status_code)
            if answer.status_code == 200:
                errors = answer.context["adminform"].form.errors
                assert all(name in errors for name in pointing), (label(model), errors)

    assert snapshot(watched_models()) == before


@pytest.mark.parametrize("model", [m for m, _ in OWNED], ids=label)
def test_a_plain_member_reads_but_never_writes_their_own_companys_objects(
    client, world, model
):
    """Every permission, but the member role: no add, change, delete or bulk action."""
    own = objects_of(model, world.a).first()
    assert own is not None, f"the test world has no {label(model)} of company A"
    login(client, world.member)
    before = snapshot(watched_models())
    assert client.get(url(model, "add")).status_code == 403
    assert client.post(url(model, "change", own.pk), values_of(own)).status_code in (403, 405)
    assert client.post(url(model, "delete", own.pk), {"post": "yes"}).status_code == 403
    listing = client.get(url(model, "changelist"))
    assert listing.status_code == 200
    shown = {obj.pk for obj in listing.context["cl"].result_list}
    assert (own.pk in shown) == (label(model) not in MANAGERS_ONLY)
    if listing.context.get("action_form"):
        for name, _ in listing.context["action_form"].fields["action"].choices:
            if name:
                client.post(
                    url(model, "changelist"),
                    {"action": name, "_selected_action": [own.pk], "post": "yes", "index": 0},
                )
    assert snapshot(watched_models()) == before


AUTOCOMPLETE_FIELDS = [
    (model, field)
    for model, _ in REGISTRY
    for field in model._meta.get_fields()
    if field.concrete
    and (field.many_to_one or field.one_to_one or field.many_to_many)
    and field.related_model in admin.site._registry
]


@pytest.mark.parametrize(
    "model, field", AUTOCOMPLETE_FIELDS, ids=lambda v: getattr(v, "name", None) or label(v)
)
def test_autocomplete_never_offers_a_foreign_companys_objects(attacker, world, model, field):
    remote = field.related_model
    if remote is User:
        strangers = User.objects.exclude(memberships__company=world.a)
        hidden = set(strangers.values_list("pk", flat=True))
    elif path_to_company(remote):
        hidden = set(objects_of(remote, world.b).values_list("pk", flat=True))
        assert hidden, f"the test world has no {label(remote)} of company B"
    else:
        hidden = set(remote._default_manager.values_list("pk", flat=True))
    for term in ["", "b", "beta", "other", "root"]:
        response = attacker.get(
            reverse("admin:autocomplete"),
            {"app_label": model._meta.app_label, "model_name": model._meta.model_name,
             "field_name": field.name, "term": term},
        )
        assert response.status_code in (200, 403, 404), response.status_code
        if response.status_code == 200:
            offered = {int(result["id"]) for result in response.json()["results"]}
            assert not offered & hidden, (label(model), field.name, term)


@pytest.mark.parametrize(
    "name", sorted(set(GLOBAL_MODELS) - {"auth.User"} & {label(m) for m, _ in REGISTRY})
)
def test_global_models_are_for_superusers_only(client, world, name):
    model = next(m for m, _ in REGISTRY if label(m) == name)
    login(client, world.owner)
    assert client.get(url(model, "changelist")).status_code == 403
    assert client.get(url(model, "add")).status_code == 403
    assert url(model, "changelist") not in client.get(reverse("admin:index")).content.decode()
    assert login(client, world.superuser).get(url(model, "changelist")).status_code == 200


# --- escalation: joining another company, granting roles, account flags ---------


def test_joining_another_company_with_only_the_add_membership_permission_is_refused(
    client, tenants
):
    """The reported attack: user=<self>&company=<B>&role=owner was a 302."""
    tenants.owner.user_permissions.set(
        Permission.objects.filter(codename="add_membership")
    )
    login(client, tenants.owner)
    response = client.post(
        url(Membership, "add"),
        {"user": tenants.owner.pk, "company": tenants.b.pk, "role": "owner"},
    )
    assert response.status_code == 200
    assert "company" in response.context["adminform"].form.errors
    assert not Membership.objects.filter(user=tenants.owner, company=tenants.b).exists()


def test_another_companys_page_and_membership_rows_are_out_of_reach(attacker, world):
    b = world.b
    inline = {
        "memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "0",
        "memberships-0-user": world.owner.pk, "memberships-0-role": "owner",
        "name": b.name, "slug": b.slug, "timezone": "UTC",
    }
    assert refused(attacker.get(url(Company, "change", b.pk)))
    assert refused(attacker.post(url(Company, "change", b.pk), inline))
    row = Membership.objects.get(company=b)
    assert refused(attacker.post(
        url(Membership, "change", row.pk),
        {"user": world.owner.pk, "company": b.pk, "role": "owner"},
    ))
    assert set(Membership.objects.filter(company=b).values_list("user", flat=True)) == {
        world.other_owner.pk
    }


@pytest.fixture
def deputy(world):
    """An admin (not owner) of company A, with every permission, who also
    administers company Gamma, where `colleague` is a plain member."""
    deputy = User.objects.create_user("deputy", password="pw-deputy-123!", is_staff=True)
    colleague = User.objects.create_user("colleague", password="pw-coll-123!", is_staff=True)
    gamma = Company.objects.create(name="Cafe Gamma", slug="gamma")
    Membership.objects.create(company=world.a, user=deputy, role=Membership.Role.ADMIN)
    Membership.objects.create(company=gamma, user=deputy, role=Membership.Role.ADMIN)
    Membership.objects.create(company=gamma, user=colleague, role=Membership.Role.MEMBER)
    deputy.user_permissions.set(Permission.objects.all())
    return deputy, colleague


def test_nobody_grants_a_role_above_their_own(client, world, deputy):
    deputy, colleague = deputy
    a = world.a
    login(client, deputy)
    # Adding someone to A as owner.
    response = client.post(
        url(Membership, "add"), {"user": colleague.pk, "company": a.pk, "role": "owner"}
    )
    assert response.status_code == 200
    assert "role" in response.context["adminform"].form.errors
    # Promoting A's plain member to owner, or themselves.
    for row in [
        Membership.objects.get(company=a, user=world.member),
        Membership.objects.get(company=a, user=deputy),
    ]:
        response = client.post(
            url(Membership, "change", row.pk),
            {"user": row.user_id, "company": a.pk, "role": "owner"},
        )
        assert response.status_code == 200
        assert "role" in response.context["adminform"].form.errors
    # The owner's row is above them: not changed, not deleted.
    owners_row = Membership.objects.get(company=a, user=world.owner)
    assert client.post(
        url(Membership, "change", owners_row.pk),
        {"user": world.owner.pk, "company": a.pk, "role": "member"},
    ).status_code == 403
    assert client.post(url(Membership, "delete", owners_row.pk), {"post": "yes"}).status_code == 403
    # The same through A's company page inline.
    rows = list(Membership.objects.filter(company=a).order_by("pk"))
    data = {
        "memberships-TOTAL_FORMS": str(len(rows) + 1),
        "memberships-INITIAL_FORMS": str(len(rows)),
        f"memberships-{len(rows)}-user": colleague.pk,
        f"memberships-{len(rows)}-role": "owner",
    }
    for i, row in enumerate(rows):
        data.update({
            f"memberships-{i}-id": row.pk, f"memberships-{i}-company": a.pk,
            f"memberships-{i}-user": row.user_id, f"memberships-{i}-role": row.role,
        })
        if row.user_id == world.owner.pk:
            data[f"memberships-{i}-role"] = "member"  # demoting the owner
    response = client.post(url(Company, "change", a.pk), data)
    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert not formset.is_valid()
    # A plain member manages nobody.
    login(client, world.member)
    assert client.post(
        url(Membership, "add"), {"user": world.member.pk, "company": a.pk, "role": "member"}
    ).status_code == 403
    assert sorted(Membership.objects.filter(company=a).values_list("user__username", "role")) == [
        ("deputy", "admin"), ("member", "member"), ("owner", "owner")
    ]


def test_non_superusers_see_the_users_of_their_companies_and_change_no_account(attacker, world):
    users = attacker.get(url(User, "changelist")).context["cl"].result_list
    assert {u.username for u in users} == {"owner", "member"}
    for target in [world.other_owner, world.superuser]:
        assert refused(attacker.get(url(User, "change", target.pk)))
    flags = {"username": "owner", "is_staff": "on", "is_superuser": "on", "is_active": "on",
             "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"}
    for target in [world.owner, world.member]:
        assert attacker.post(url(User, "change", target.pk), flags).status_code == 403
        assert attacker.post(
            url(User, "password_change", target.pk),
            {"password1": "Taken-over-123!", "password2": "Taken-over-123!",
             "usable_password": "true"},
        ).status_code == 403
    assert attacker.post(url(User, "add"), {"username": "sneaky", "password1": "x-123456!A",
                                            "password2": "x-123456!A"}).status_code == 403
    assert attacker.post(url(User, "delete", world.member.pk), {"post": "yes"}).status_code == 403
    assert not User.objects.filter(is_superuser=True).exclude(pk=world.superuser.pk).exists()
    world.member.refresh_from_db()
    assert world.member.check_password("pw-member-123!")
    assert not User.objects.filter(username="sneaky").exists()


def test_adding_an_existing_member_on_the_company_page_is_a_form_error(client, tenants):
    a = tenants.a
    for user in [tenants.superuser, tenants.owner]:
        if not user.is_superuser:
            user.user_permissions.set(Permission.objects.filter(content_type__app_label="companies"))
        login(client, user)
        response = client.post(url(Company, "change", a.pk), {
            "name": a.name, "slug": a.slug, "timezone": a.timezone, "is_active": "on",
            "memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "0",
            "memberships-0-user": tenants.member.pk, "memberships-0-role": "admin",
        })
        assert response.status_code == 200
        formset = response.context["inline_admin_formsets"][0].formset
        assert "already" in str(formset.errors)
    assert Membership.objects.get(company=a, user=tenants.member).role == "member"
